//! `carehub decode`: one advertisement or characteristic value from the command line
//! (or one per line on stdin) through the same [`Decoder`] the daemon uses, printed
//! as JSON. Other tools rely on this contract exactly; it is documented in
//! `docs/decode.md`.
//!
//! The JSON shape lives here, at the edge, not on the domain types.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use super::{AttrValue, BindKey, Decoded, Decoder};
use crate::model::{DeviceAddress, Value};
use crate::sensor::{Advertisement, Frame, Notification, uuid16};

/// What the command line (or one stdin line) says to decode.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub mac: Option<String>,
    pub name: Option<String>,
    pub key: Option<String>,
    /// `UUID=HEX` pairs.
    pub service_data: Vec<String>,
    /// `COMPANY=HEX` pairs.
    pub manufacturer_data: Vec<String>,
    /// `UUID=HEX`.
    pub characteristic: Option<String>,
}

/// Why an input could not be decoded; the message is the one line on stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// An argument is not in the documented syntax.
    #[error("invalid {what} {value:?}: {why}")]
    Argument {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    /// The input combines things that cannot go together.
    #[error("{0}")]
    Usage(&'static str),
    /// The decoder rejected the data.
    #[error(transparent)]
    Decode(#[from] super::DecodeError),
    /// A line on stdin is not the documented JSON object.
    #[error("invalid json line: {0}")]
    Json(String),
    /// Reading stdin or writing stdout failed.
    #[error("i/o: {0}")]
    Io(String),
}

fn arg(what: &'static str, value: &str, why: &'static str) -> CliError {
    CliError::Argument {
        what,
        value: value.to_owned(),
        why,
    }
}

/// Hex digits to bytes; an empty string is no bytes.
pub fn parse_hex(what: &'static str, s: &str) -> Result<Vec<u8>, CliError> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(arg(what, s, "odd number of hex digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| arg(what, s, "not hex"))
        })
        .collect()
}

fn strip_0x(s: &str) -> &str {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

fn parse_u16(what: &'static str, s: &str) -> Result<u16, CliError> {
    let h = strip_0x(s.trim());
    if h.is_empty() || h.len() > 4 {
        return Err(arg(what, s, "expected 16-bit hex like fcd2 or 0x2A37"));
    }
    u16::from_str_radix(h, 16).map_err(|_| arg(what, s, "not hex"))
}

/// A 16-bit UUID in hex (`fcd2`, `0x2A37`) or a full 128-bit UUID.
pub fn parse_uuid(s: &str) -> Result<uuid::Uuid, CliError> {
    let h = strip_0x(s.trim());
    if h.len() <= 4 {
        return Ok(uuid16(parse_u16("uuid", s)?));
    }
    uuid::Uuid::parse_str(h).map_err(|_| arg("uuid", s, "expected 16-bit hex or a 128-bit uuid"))
}

fn parse_key(s: &str) -> Result<BindKey, CliError> {
    let bytes = parse_hex("key", s)?;
    BindKey::try_from(bytes.as_slice()).map_err(|_| arg("key", s, "expected 32 hex digits"))
}

fn split_pair<'a>(what: &'static str, s: &'a str) -> Result<(&'a str, &'a str), CliError> {
    s.split_once('=')
        .ok_or_else(|| arg(what, s, "expected KEY=HEX"))
}

/// Turns an input into a frame, registering its key with the decoder.
fn frame(input: &Input, decoder: &mut Decoder) -> Result<Frame, CliError> {
    let address = match &input.mac {
        Some(m) => m
            .parse::<DeviceAddress>()
            .map_err(|_| arg("mac", m, "expected six hex pairs like AA:BB:CC:DD:EE:FF"))?,
        None => DeviceAddress::default(),
    };
    let key = input.key.as_deref().map(parse_key).transpose()?;
    if let Some(c) = &input.characteristic {
        if !input.service_data.is_empty() || !input.manufacturer_data.is_empty() {
            return Err(CliError::Usage(
                "a characteristic value cannot be combined with advertisement data",
            ));
        }
        let (uuid, hex) = split_pair("characteristic", c)?;
        if let Some(k) = key {
            if input.mac.is_none() {
                return Err(CliError::Usage(
                    "--key needs --mac (the nonce contains the address)",
                ));
            }
            decoder.set_key(address, k);
        }
        return Ok(Frame::Notification(Notification {
            address,
            characteristic: parse_uuid(uuid)?,
            value: parse_hex("characteristic value", hex)?,
        }));
    }
    let mut adv = Advertisement {
        address,
        local_name: input.name.clone(),
        ..Advertisement::default()
    };
    for sd in &input.service_data {
        let (uuid, hex) = split_pair("service data", sd)?;
        adv.service_data
            .push((parse_uuid(uuid)?, parse_hex("service data", hex)?));
    }
    for md in &input.manufacturer_data {
        let (company, hex) = split_pair("manufacturer data", md)?;
        adv.manufacturer_data.push((
            parse_u16("company id", company)?,
            parse_hex("manufacturer data", hex)?,
        ));
    }
    if adv.service_data.is_empty() && adv.manufacturer_data.is_empty() {
        return Err(CliError::Usage(
            "nothing to decode: give --service-data, --manufacturer-data or --characteristic",
        ));
    }
    if let Some(k) = key {
        if input.mac.is_none() {
            // A frame that carries its MAC (BTHome "MAC included", MiBeacon's MAC
            // field) is encrypted under it: that is the address to decode as.
            adv.address = super::embedded_mac(&adv).ok_or(CliError::Usage(
                "--key needs --mac (the nonce contains the address) unless the frame carries its MAC",
            ))?;
        }
        decoder.set_key(adv.address, k);
    }
    Ok(Frame::Advertisement(adv))
}

/// Decodes one input to its JSON result.
pub fn decode_one(input: &Input, decoder: &mut Decoder) -> Result<Json, CliError> {
    decode_input(input, decoder).map(|d| to_json(&d))
}

fn decode_input(input: &Input, decoder: &mut Decoder) -> Result<Decoded, CliError> {
    let f = frame(input, decoder)?;
    Ok(decoder.decode(&f)?)
}

/// Writes the text of [`to_json`]'s object, exactly as `to_json(d).to_string()`
/// gives it, without building the tree: what `--stdin` prints for each line.
/// serde_json's objects are sorted maps, so keys go in byte order and the last of
/// a repeated attribute wins; numbers and strings are written by serde_json.
pub fn write_json(d: &Decoded, out: &mut Vec<u8>) {
    fn text(out: &mut Vec<u8>, s: &str) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
    let mut attributes: Vec<(&str, &AttrValue)> = Vec::with_capacity(d.attributes.len());
    for (k, v) in &d.attributes {
        match attributes.binary_search_by(|(x, _)| x.cmp(k)) {
            Ok(i) => {
                if let Some(slot) = attributes.get_mut(i) {
                    slot.1 = v;
                }
            }
            Err(i) => attributes.insert(i, (k, v)),
        }
    }
    out.extend_from_slice(b"{\"attributes\":{");
    for (i, (k, v)) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        text(out, k);
        out.push(b':');
        match v {
            AttrValue::Int(n) => {
                let _ = serde_json::to_writer(&mut *out, n);
            }
            AttrValue::Text(t) => text(out, t),
            AttrValue::Owned(t) => text(out, t),
            AttrValue::Address(a) => text(out, &a.to_string()),
        }
    }
    out.extend_from_slice(b"},\"events\":[");
    for (i, e) in d.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"detail\":");
        text(out, &e.detail);
        out.extend_from_slice(b",\"kind\":");
        text(out, e.kind);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"format\":");
    text(out, d.format);
    out.extend_from_slice(b",\"readings\":[");
    for (i, v) in d.values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        if let Some(t) = v.device_time {
            out.extend_from_slice(b"\"device_time\":");
            match t.as_if_utc() {
                Some(_) => {
                    let s = format!(
                        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                        t.year, t.month, t.day, t.hour, t.minute, t.second
                    );
                    text(out, &s);
                }
                None => out.extend_from_slice(b"null"),
            }
            out.push(b',');
        }
        if let Some(q) = v.qualifier {
            out.extend_from_slice(b"\"qualifier\":");
            text(out, q);
            out.push(b',');
        }
        out.extend_from_slice(b"\"quantity\":");
        text(out, v.quantity.as_str());
        out.extend_from_slice(b",\"status\":");
        text(out, v.value.status());
        out.extend_from_slice(b",\"unit\":");
        text(out, v.unit.ucum());
        out.extend_from_slice(b",\"value\":");
        match v.value {
            Value::Number(n) if n.is_finite() => {
                let _ = serde_json::to_writer(&mut *out, &n);
            }
            _ => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// The documented JSON shape of a decoded frame.
pub fn to_json(d: &Decoded) -> Json {
    let readings: Vec<Json> = d
        .values
        .iter()
        .map(|v| {
            let mut r = Map::new();
            r.insert("quantity".into(), json!(v.quantity.as_str()));
            r.insert(
                "value".into(),
                match v.value {
                    Value::Number(n) => json!(n),
                    Value::Special(_) => Json::Null,
                },
            );
            r.insert("unit".into(), json!(v.unit.ucum()));
            r.insert("status".into(), json!(v.value.status()));
            if let Some(q) = v.qualifier {
                r.insert("qualifier".into(), json!(q));
            }
            if let Some(t) = v.device_time {
                let s = t.as_if_utc().map(|_| {
                    format!(
                        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                        t.year, t.month, t.day, t.hour, t.minute, t.second
                    )
                });
                r.insert("device_time".into(), json!(s));
            }
            Json::Object(r)
        })
        .collect();
    let events: Vec<Json> = d
        .events
        .iter()
        .map(|e| json!({"kind": e.kind, "detail": e.detail}))
        .collect();
    let mut attributes = Map::new();
    for (k, v) in &d.attributes {
        let v = match v {
            AttrValue::Int(i) => json!(i),
            AttrValue::Text(t) => json!(t),
            AttrValue::Owned(s) => json!(s),
            AttrValue::Address(a) => json!(a.to_string()),
        };
        attributes.insert((*k).to_owned(), v);
    }
    json!({
        "format": d.format,
        "readings": readings,
        "events": events,
        "attributes": attributes,
    })
}

/// One `--stdin` line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    mac: Option<String>,
    name: Option<String>,
    key: Option<String>,
    #[serde(default)]
    service_data: BTreeMap<String, String>,
    #[serde(default)]
    manufacturer_data: BTreeMap<String, String>,
    #[serde(default)]
    characteristic: BTreeMap<String, String>,
}

fn line_input(text: &str) -> Result<Input, CliError> {
    let l: Line = serde_json::from_str(text).map_err(|e| CliError::Json(e.to_string()))?;
    if l.characteristic.len() > 1 {
        return Err(CliError::Usage("at most one characteristic per line"));
    }
    Ok(Input {
        mac: l.mac,
        name: l.name,
        key: l.key,
        service_data: l
            .service_data
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        manufacturer_data: l
            .manufacturer_data
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        characteristic: l
            .characteristic
            .into_iter()
            .next()
            .map(|(k, v)| format!("{k}={v}")),
    })
}

/// `--stdin`: one JSON input per line, one JSON result per line; state (keys,
/// counters, packet ids) carries from line to line as in the daemon. Blank lines
/// are skipped.
///
/// Results are buffered, not written line by line (a write per line cost about 150
/// times the decode): they go out when the buffer fills, at the end, and whenever
/// no whole input line is left to read without waiting, so that a tool that writes
/// one line and waits for its answer still gets it at once.
pub fn run_stdin(input: impl Read, out: impl Write) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Io(e.to_string());
    let mut input = BufReader::with_capacity(STDIN_BUFFER, input);
    let mut out = BufWriter::with_capacity(STDIN_BUFFER, out);
    let mut decoder = Decoder::new();
    let mut line = String::new();
    let mut result = Vec::new();
    loop {
        // The next read may block on the writer of stdin: answer what we have first.
        if !input.buffer().contains(&b'\n') {
            out.flush().map_err(io)?;
        }
        line.clear();
        if input.read_line(&mut line).map_err(io)? == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        result.clear();
        match line_input(&line).and_then(|i| decode_input(&i, &mut decoder)) {
            Ok(d) => write_json(&d, &mut result),
            Err(e) => {
                let _ = serde_json::to_writer(&mut result, &json!({"error": e.to_string()}));
            }
        }
        result.push(b'\n');
        out.write_all(&result).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Bytes read from stdin, and results held, at a time by `--stdin`.
const STDIN_BUFFER: usize = 64 * 1024;

/// One input from the command line: the JSON line on success.
pub fn run_once(input: &Input) -> Result<String, CliError> {
    let mut decoder = Decoder::new();
    decode_one(input, &mut decoder).map(|j| j.to_string())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::rc::Rc;

    use super::run_stdin;

    /// What `run_stdin` has written so far, shared with the reader below.
    #[derive(Clone, Default)]
    struct Shared(Rc<RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Stdin as a tool that waits for answers feeds it: one chunk per read, and
    /// before each further chunk every line sent so far must have its answer out.
    struct Interactive {
        chunks: Vec<&'static str>,
        sent_lines: usize,
        out: Shared,
    }

    impl Read for Interactive {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let answered = self.out.0.borrow().iter().filter(|&&b| b == b'\n').count();
            assert_eq!(
                answered, self.sent_lines,
                "stdin would block with answers still held back"
            );
            if self.chunks.is_empty() {
                return Ok(0);
            }
            let chunk = self.chunks.remove(0);
            assert!(chunk.len() <= buf.len());
            buf[..chunk.len()].copy_from_slice(chunk.as_bytes());
            // Blank lines get no answer.
            self.sent_lines += chunk
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
                .count();
            Ok(chunk.len())
        }
    }

    const LINE: &str = "{\"service_data\": {\"fcd2\": \"4002ca09\"}}\n";

    #[test]
    fn written_json_is_the_documented_object_byte_for_byte() {
        use super::super::{Decoder, bthome};
        use super::{Input, decode_input, to_json, write_json};
        let input = |sd: &[&str], md: &[&str], ch: Option<&str>, mac: Option<&str>| Input {
            mac: mac.map(str::to_owned),
            name: None,
            key: None,
            service_data: sd.iter().map(|s| (*s).to_owned()).collect(),
            manufacturer_data: md.iter().map(|s| (*s).to_owned()).collect(),
            characteristic: ch.map(str::to_owned),
        };
        let mut decoded = vec![
            // BTHome events, text with quotes to escape, raw, two firmware versions
            // (a repeated key: the last wins), device type.
            bthome::decode(
                b"\x44\x3A\x01\x3C\x01\x03\x53\x05a\"b\\c\x54\x02\x01\xAB\xF0\x01\x00\xF1\x00\x01\x02\x04\xF2\x00\x01\x06",
            )
            .unwrap()
            .decoded,
        ];
        let mut d = Decoder::new();
        for i in [
            input(&["fcd2=4002ca0903bf13"], &[], None, None),
            input(&["fcd2=42a5808fe6485402ca0903bf13"], &[], None, None),
            input(
                &[],
                &["0499=0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"],
                None,
                None,
            ),
            input(
                &["fe95=5020aa0137dfaa33342d580d100404016602"],
                &[],
                None,
                Some("58:2D:34:33:AA:DF"),
            ),
            // Blood pressure with a device time; an SFLOAT NaN; heart rate with contact.
            input(
                &[],
                &[],
                Some("2a35=1e780050005d00ea070b17081e054600020f00"),
                None,
            ),
            input(&[], &[], Some("2A5E=00ff07ff07"), None),
            input(&[], &[], Some("2a37=16480004"), None),
        ] {
            decoded.push(decode_input(&i, &mut d).unwrap());
        }
        for dec in &decoded {
            let mut out = Vec::new();
            write_json(dec, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), to_json(dec).to_string());
        }
    }

    #[test]
    fn stdin_answers_go_out_before_a_read_that_may_block() {
        let out = Shared::default();
        let input = Interactive {
            // Two lines at once, then one line in two pieces, a blank line, a bad one.
            chunks: vec![
                "{\"service_data\": {\"fcd2\": \"4002ca09\"}}\n{\"service_data\": {\"fcd2\": \"4002ca09\"}}\n",
                "{\"service_data\": ",
                "{\"fcd2\": \"4002ca09\"}}\n",
                "\n",
                "not json\n",
                LINE,
            ],
            sent_lines: 0,
            out: out.clone(),
        };
        run_stdin(input, out.clone()).unwrap();
        let text = String::from_utf8(out.0.borrow().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[3].starts_with("{\"error\":"), "{text}");
        assert!(lines[4].contains("\"temperature\""), "{text}");
    }

    #[test]
    fn stdin_results_are_not_written_line_by_line() {
        /// Counts the writes that reach the output.
        #[derive(Default)]
        struct Writes(usize, Vec<u8>);
        impl Write for &mut Writes {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += 1;
                self.1.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let input = LINE.repeat(1000);
        let mut w = Writes::default();
        run_stdin(input.as_bytes(), &mut w).unwrap();
        assert_eq!(w.1.iter().filter(|&&b| b == b'\n').count(), 1000);
        // 1000 results of about 130 bytes in a 64 KiB buffer: a few writes, not 1000.
        assert!(w.0 <= 4, "{} writes for 1000 lines", w.0);
    }
}
