//! A real Chromium for the browser tests, driven over WebDriver by a small client.
//!
//! Debian's `chromedriver` is started per test on a free loopback port and starts
//! Debian's `chromium` headless with a new, empty profile. The client speaks the
//! W3C WebDriver protocol (JSON over HTTP/1.1) with `std::net` and `serde_json`: the
//! fantoccini crate would add 51 crates to Cargo.lock (two ICU stacks through the
//! `webdriver` crate, a second `thiserror` and `cookie`, hyper's client), all of
//! them also fetched by the Yocto recipe, for the dozen commands used here.
//!
//! Certificates: the session asks for `acceptInsecureCerts`, so that once the
//! gateway serves HTTPS with its self-signed device certificate Chromium accepts it
//! in this session only; no flag turns certificate checks off for the browser as a
//! whole, and nothing is trusted outside the test's profile.
//!
//! A missing chromium, chromedriver or axe-core fails the test with what to install
//! (`scripts/test` installs them); it never skips.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{free_port, wait_for};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key for an element reference in WebDriver JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Key codes of the WebDriver actions API.
pub const TAB: &str = "\u{E004}";
pub const SHIFT: &str = "\u{E008}";

/// A WebDriver error or an unexpected answer, in words for the test's failure.
pub type Result<T> = std::result::Result<T, String>;

/// Where axe-core's browser bundle is: `$CAREHUB_AXE_JS`, else what
/// `scripts/ensure-axe` installed under `.cache/axe`.
pub fn axe_js() -> PathBuf {
    std::env::var_os("CAREHUB_AXE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/axe/node_modules/axe-core/axe.min.js")
        })
}

/// One headless Chromium behind a chromedriver; both end when this is dropped.
pub struct Browser {
    driver: Child,
    driver_addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a Chromium session with a viewport of `width` x
    /// `height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} not found: run scripts/test (it installs Debian's {package}) or apt-get install {package}"
            );
        }
        let port = free_port();
        let driver_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let ready = wait_for(Duration::from_secs(10), || {
            let v = request(driver_addr, "GET", "/status", None).ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        });
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            driver_addr,
            session: String::new(),
            _profile: profile,
        };
        assert!(ready.is_some(), "chromedriver did not become ready in 10 s");
        // The flags a closed network needs: without the background-networking
        // ones Chromium keeps dialling Google's hosts and logging refusals.
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--user-data-dir={}", b._profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }
            }
        });
        let v = request(driver_addr, "POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("no Chromium session: {e}"));
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_owned();
        b.viewport(width, height).expect("set the viewport");
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        request(self.driver_addr, method, &path, body).map(|mut v| v["value"].take())
    }

    /// Makes the page's viewport exactly `width` x `height` CSS pixels, as a
    /// tablet or a phone shows it (Chrome DevTools' device emulation).
    pub fn viewport(&self, width: u32, height: u32) -> Result<()> {
        let params = json!({
            "cmd": "Emulation.setDeviceMetricsOverride",
            "params": { "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false },
        });
        self.call("POST", "/goog/cdp/execute", Some(&params))
            .map(drop)
    }

    /// One Chrome DevTools command, `{"cmd": ..., "params": {...}}`.
    pub fn cdp(&self, command: &Value) -> Result<Value> {
        self.call("POST", "/goog/cdp/execute", Some(command))
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    pub fn url(&self) -> Result<String> {
        Ok(self
            .call("GET", "/url", None)?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    pub fn find(&self, css: &str) -> Result<Element> {
        let v = self.call(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        element(&v).ok_or_else(|| format!("no element {css}: {v}"))
    }

    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self.call(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(element).collect())
            .unwrap_or_default())
    }

    /// The element's rendered text, as a person reads it.
    pub fn text(&self, e: &Element) -> Result<String> {
        Ok(self
            .call("GET", &format!("/element/{}/text", e.0), None)?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    pub fn click(&self, e: &Element) -> Result<()> {
        self.call("POST", &format!("/element/{}/click", e.0), Some(&json!({})))
            .map(drop)
    }

    /// Clicks something that loads a new page (a link, a form's button) and
    /// waits until the new page has loaded, so that nothing is read from the old.
    pub fn click_to_page(&self, e: &Element) -> Result<()> {
        self.execute("window.__carehubOldPage = true;", json!([]))?;
        self.click(e)?;
        wait_for(Duration::from_secs(10), || {
            let v = self
                .execute(
                    "return !window.__carehubOldPage && document.readyState === 'complete';",
                    json!([]),
                )
                .ok()?;
            (v == true).then_some(())
        })
        .ok_or_else(|| "no new page within 10 s of the click".to_owned())
    }

    /// Types `text` into a field, as a person would.
    pub fn type_into(&self, e: &Element, text: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(&json!({ "text": text })),
        )
        .map(drop)
    }

    /// Presses and releases `key` with optional modifier keys held.
    pub fn press(&self, modifiers: &[&str], key: &str) -> Result<()> {
        let mut actions: Vec<Value> = Vec::new();
        for m in modifiers {
            actions.push(json!({ "type": "keyDown", "value": m }));
        }
        actions.push(json!({ "type": "keyDown", "value": key }));
        actions.push(json!({ "type": "keyUp", "value": key }));
        for m in modifiers.iter().rev() {
            actions.push(json!({ "type": "keyUp", "value": m }));
        }
        let body = json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] });
        self.call("POST", "/actions", Some(&body)).map(drop)
    }

    /// Runs `script` in the page (a function body; `arguments` holds `args`).
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` in the page and waits for it to call its last argument.
    pub fn execute_async(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            "POST",
            "/execute/async",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// The viewport, or the whole page however tall, as a PNG (through the
    /// DevTools protocol).
    pub fn screenshot(&self, whole_page: bool) -> Result<Vec<u8>> {
        let params = json!({
            "cmd": "Page.captureScreenshot",
            "params": { "format": "png", "captureBeyondViewport": whole_page },
        });
        let v = self.call("POST", "/goog/cdp/execute", Some(&params))?;
        base64_decode(v["data"].as_str().unwrap_or(""))
            .ok_or_else(|| "screenshot is not base64".into())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn element(v: &Value) -> Option<Element> {
    v[ELEMENT].as_str().map(|s| Element(s.to_owned()))
}

/// One WebDriver command: a request on a fresh connection, the JSON answer, or
/// the driver's error in words.
fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("chromedriver at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).map_err(|e| e.to_string())?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(n) = lower.strip_prefix("content-length:") {
            length = n.trim().parse::<usize>().ok();
        }
    }
    let mut raw = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(|e| e.to_string())?;
            let n = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| format!("bad chunk size {size:?}"))?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            raw.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        // chromedriver keeps the connection open whatever the request says.
        raw.resize(n, 0);
        r.read_exact(&mut raw).map_err(|e| e.to_string())?;
    } else {
        r.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    }
    let v: Value = serde_json::from_slice(&raw)
        .map_err(|e| format!("{method} {path}: {status}, not JSON ({e})"))?;
    if status >= 400 {
        return Err(format!(
            "{method} {path}: {status} {} {}",
            v["value"]["error"], v["value"]["message"]
        ));
    }
    Ok(v)
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn six(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= six(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[test]
fn base64_decode_matches_the_rfc_4648_vectors() {
    for (enc, dec) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYg==", "foob"),
        ("Zm9vYmE=", "fooba"),
        ("Zm9vYmFy", "foobar"),
    ] {
        assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes(), "{enc}");
    }
    assert_eq!(base64_decode("Zm9v!"), None);
}
