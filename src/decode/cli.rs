//! `carehub decode`: one advertisement or characteristic value from the command line
//! (or one per line on stdin) through the same [`Decoder`] the daemon uses, printed
//! as JSON. Other tools rely on this contract exactly; it is documented in
//! `docs/decode.md`.
//!
//! The JSON shape lives here, at the edge, not on the domain types.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value as Json, json};

use super::{AttrValue, BindKey, DecodeError, Decoded, Decoder};
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
        // Keys, quantities, units and statuses are fixed strings with nothing to
        // escape: written as they are, the same bytes serde_json would write
        // (it escapes only `"`, `\\` and control characters), without its
        // escaping writer.
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            out.reserve(s.len() + 2);
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        } else {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
    }
    out.extend_from_slice(b"{\"attributes\":{");
    // A frame has a handful of attributes: picking the next key each time costs
    // less than sorting a copy, and allocates nothing.
    let mut previous: Option<&str> = None;
    loop {
        let mut next: Option<(&str, &AttrValue)> = None;
        for (k, v) in &d.attributes {
            if previous.is_some_and(|p| *k <= p) {
                continue;
            }
            // A smaller key takes the place, and so does the same key again: of
            // a repeated key, the last one wins.
            match next {
                Some((n, _)) if *k > n => {}
                _ => next = Some((k, v)),
            }
        }
        let Some((k, v)) = next else {
            break;
        };
        if previous.is_some() {
            out.push(b',');
        }
        previous = Some(k);
        text(out, k);
        out.push(b':');
        match v {
            AttrValue::Int(n) => {
                let _ = serde_json::to_writer(&mut *out, n);
            }
            AttrValue::Text(t) => text(out, t),
            AttrValue::Owned(t) => text(out, t),
            // Hex digits and colons: nothing to escape.
            AttrValue::Address(a) => write_address(a, out),
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
                // Digits and separators: nothing to escape.
                Some(_) => {
                    let _ = write!(
                        out,
                        "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}\"",
                        t.year, t.month, t.day, t.hour, t.minute, t.second
                    );
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
        // Quantity names, statuses and UCUM units come from the model's fixed
        // tables, none with a byte to escape
        // (`decode::cli::tests::model_names_need_no_escaping`): written as they
        // are, without looking at each byte.
        out.extend_from_slice(b"\"quantity\":\"");
        out.extend_from_slice(v.quantity.as_str().as_bytes());
        out.extend_from_slice(b"\",\"status\":\"");
        out.extend_from_slice(v.value.status().as_bytes());
        out.extend_from_slice(b"\",\"unit\":\"");
        out.extend_from_slice(v.unit.ucum().as_bytes());
        out.extend_from_slice(b"\",\"value\":");
        match v.value {
            Value::Number(n) if n.is_finite() => write_number(n, out),
            _ => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// A finite number as serde_json writes it: the shortest decimal that reads back as
/// the same double, in plain notation between 1e-5 and 1e16, with at least one
/// digit after the point. Sensors send values in steps of 1, 0.1, ... 0.000001,
/// which are written here from their digits; serde_json's float formatter (about
/// a tenth of `--stdin`'s time) writes every other number. Held equal by
/// `decode::cli::tests::numbers_are_written_as_serde_json_writes_them`.
fn write_number(n: f64, out: &mut Vec<u8>) {
    let Some((mut digits, places)) = short_decimal(n) else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &n);
        return;
    };
    // Written from the right: at most a sign, ten digits, a point and six more.
    let mut buf = [0u8; 24];
    let mut at = buf.len();
    let mut put = |b: u8| {
        at = at.saturating_sub(1);
        if let Some(slot) = buf.get_mut(at) {
            *slot = b;
        }
    };
    if places == 0 {
        put(b'0');
    }
    for _ in 0..places {
        put(b'0' + (digits % 10) as u8);
        digits /= 10;
    }
    put(b'.');
    loop {
        put(b'0' + (digits % 10) as u8);
        digits /= 10;
        if digits == 0 {
            break;
        }
    }
    if n < 0.0 {
        put(b'-');
    }
    out.extend_from_slice(buf.get(at..).unwrap_or_default());
}

/// `(|n| × 10^places, places)` for the shortest decimal of at most six places that
/// reads back as `n`: the one serde_json writes. `None` when there is none or `|n|`
/// is outside 0.0001 to 4·10^9.
///
/// Below 2^32 a double's neighbours are less than 10^-6 apart, so at most one
/// decimal of six places reads back as `n`: the one nearest `|n| × 10^6`, checked
/// by dividing it back (the integer is below 2^53 and 10^6 exact, so the division
/// gives the double nearest that decimal). Any shorter decimal that read back as
/// `n` would be that same one with its trailing zeros, which are dropped.
fn short_decimal(n: f64) -> Option<(u64, u32)> {
    let a = n.abs();
    if !(1e-4..4e9).contains(&a) {
        return None;
    }
    // `a × 10^6` is below 2^53 and not negative: converting after adding a half
    // rounds it to the nearest integer, and the check below catches any miss.
    let mut digits = (a * 1e6 + 0.5) as u64;
    if digits as f64 / 1e6 != a {
        return None;
    }
    let mut places = 6;
    while places > 0 && digits.is_multiple_of(10) {
        digits /= 10;
        places -= 1;
    }
    Some((digits, places))
}

/// `"AA:BB:CC:DD:EE:FF"`, quoted: what `DeviceAddress`'s `Display` prints, one
/// table look-up a digit instead of six `{:02X}`.
fn write_address(a: &DeviceAddress, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // `n & 0x0f` is always in the table.
    let digit = |n: u8| HEX.get(usize::from(n & 0x0f)).copied().unwrap_or(b'0');
    out.reserve(19);
    out.push(b'"');
    for (i, byte) in a.0.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        out.extend_from_slice(&[digit(byte >> 4), digit(*byte)]);
    }
    out.push(b'"');
}

/// [`DeviceAddress`]'s `FromStr` for the usual spelling, exactly 17 bytes of hex
/// pairs parted by `:` or `-`, read byte by byte; `None` for anything else, which
/// `FromStr` then judges.
fn plain_address(s: &str) -> Option<DeviceAddress> {
    let b: &[u8; 17] = s.as_bytes().try_into().ok()?;
    let mut out = [0u8; 6];
    for (i, (byte, chunk)) in out.iter_mut().zip(b.chunks(3)).enumerate() {
        let (hi, lo, sep) = match chunk {
            [hi, lo, sep] => (*hi, *lo, Some(*sep)),
            [hi, lo] => (*hi, *lo, None),
            _ => return None,
        };
        match (i, sep) {
            (5, None) | (0..5, Some(b':' | b'-')) => {}
            _ => return None,
        }
        *byte = hex_digit(hi)? << 4 | hex_digit(lo)?;
    }
    Some(DeviceAddress(out))
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

// The plain `--stdin` line, decoded without allocating.
//
// [`line_input`] turns a line into owned strings and maps, then into `KEY=HEX`
// strings that [`frame`] parses again into a new frame: about a dozen allocations
// a line, most of what `--stdin` cost beside the decoder. The lines tools send are
// plain: an object with known keys, maps whose keys rise (JSON from a sorted or
// one-entry map), hex digits and nothing else. [`decode_plain_line`] reads such a
// line with borrowed strings straight into a frame kept from line to line, and
// declines everything else before it touches the decoder, so that
// [`line_input`] and [`frame`] still answer every other line, and every error,
// exactly as before (`decode::cli::tests::stdin_batch_answers_are_unchanged`).

/// Reused from line to line by `--stdin`: the frame being filled, the byte
/// buffers of earlier lines and the decoder's result.
struct Scratch {
    adv: Advertisement,
    note: Notification,
    /// What the decoder wrote for this line (its vectors kept from line to line).
    decoded: Decoded,
    /// Service and manufacturer data buffers of earlier lines.
    spare: Vec<Vec<u8>>,
    /// The local name of an earlier line, for its capacity.
    spare_name: String,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            adv: Advertisement::default(),
            note: Notification {
                address: DeviceAddress::default(),
                characteristic: uuid16(0),
                value: Vec::new(),
            },
            spare: Vec::new(),
            spare_name: String::new(),
            decoded: Decoded::default(),
        }
    }
}

impl Scratch {
    /// Empties the advertisement, keeping its buffers for the next line.
    fn reset(&mut self) {
        let Scratch {
            adv,
            spare,
            spare_name,
            ..
        } = self;
        spare.extend(adv.service_data.drain(..).map(|(_, b)| b));
        spare.extend(adv.manufacturer_data.drain(..).map(|(_, b)| b));
        if let Some(name) = adv.local_name.take() {
            *spare_name = name;
        }
        adv.address = DeviceAddress::default();
    }
}

/// A buffer from `spare`, empty.
fn take_buffer(spare: &mut Vec<Vec<u8>>) -> Vec<u8> {
    let mut b = spare.pop().unwrap_or_default();
    b.clear();
    b
}

/// Appends the bytes of `s` to `out` when it is what [`parse_hex`] takes without
/// question: pairs of 0-9, a-f, A-F, white space around them. `None` for anything
/// else (odd lengths, signs, other characters), which [`parse_hex`] then judges.
fn plain_hex(s: &str, out: &mut Vec<u8>) -> Option<()> {
    // `str::trim` takes more white space than this; a value with any of that at an
    // end is not plain (such white space is no hex digit), and goes the long way.
    let s = s.as_bytes().trim_ascii();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let start = out.len();
    out.resize(start + s.len() / 2, 0);
    let mut bad = 0;
    for (byte, pair) in out.get_mut(start..)?.iter_mut().zip(s.chunks_exact(2)) {
        let [hi, lo] = pair else {
            return None;
        };
        let (hi, lo) = (nibble(*hi), nibble(*lo));
        // A digit is 0-15; anything else has high bits set, checked once at the end.
        bad |= hi | lo;
        *byte = hi << 4 | lo;
    }
    (bad < 16).then_some(())
}

/// Exactly four hex digits as a number: what [`parse_u16`] and [`parse_uuid`]
/// make of them.
fn four_hex(s: &str) -> Option<u16> {
    let &[a, b, c, d] = s.as_bytes() else {
        return None;
    };
    let mut n = 0u16;
    for digit in [a, b, c, d] {
        n = n << 4 | u16::from(hex_digit(digit)?);
    }
    Some(n)
}

/// The value of a hex digit; 0xFF for every other byte.
fn nibble(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0xFF,
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    let n = nibble(b);
    (n < 16).then_some(n)
}

/// [`parse_key`] for a plain key (32 hex digits).
fn plain_key(s: &str) -> Option<BindKey> {
    let s = s.trim().as_bytes();
    if s.len() != 32 {
        return None;
    }
    let mut key = BindKey::default();
    for (k, pair) in key.iter_mut().zip(s.chunks_exact(2)) {
        let [hi, lo] = pair else {
            return None;
        };
        *k = hex_digit(*hi)? << 4 | hex_digit(*lo)?;
    }
    Some(key)
}

/// A string of a line: borrowed from it unless it was written with escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// What a plain line holds besides the advertisement data, which goes straight
/// into [`Scratch::adv`].
#[derive(Default)]
struct PlainLine<'de> {
    mac: Option<Text<'de>>,
    name: Option<Text<'de>>,
    key: Option<Text<'de>>,
    characteristic: Option<(Text<'de>, Text<'de>)>,
}

/// The line is not plain: [`line_input`] takes it. Never shown.
fn not_plain<E: de::Error>() -> E {
    E::custom("not a plain line")
}

/// Reads a line's object into a [`PlainLine`] and the scratch advertisement.
struct LineSeed<'s>(&'s mut Scratch);

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = PlainLine<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PlainLine<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = PlainLine<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a --stdin line")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PlainLine<'de>, A::Error> {
        let mut line = PlainLine::default();
        // A field given twice is an error of `Line`'s: not plain.
        let mut seen = 0u8;
        let mut first_time = |bit: u8| {
            let first = seen & bit == 0;
            seen |= bit;
            if first { Ok(()) } else { Err(not_plain()) }
        };
        while let Some(field) = map.next_key::<Text<'de>>()? {
            match field.0.as_ref() {
                "mac" => {
                    first_time(1)?;
                    line.mac = map.next_value()?;
                }
                "name" => {
                    first_time(2)?;
                    line.name = map.next_value()?;
                }
                "key" => {
                    first_time(4)?;
                    line.key = map.next_value()?;
                }
                "service_data" => {
                    first_time(8)?;
                    map.next_value_seed(DataSeed {
                        scratch: &mut *self.0,
                        company: false,
                    })?;
                }
                "manufacturer_data" => {
                    first_time(16)?;
                    map.next_value_seed(DataSeed {
                        scratch: &mut *self.0,
                        company: true,
                    })?;
                }
                "characteristic" => {
                    first_time(32)?;
                    line.characteristic = map.next_value_seed(OneCharacteristic)?;
                }
                _ => return Err(not_plain()),
            }
        }
        Ok(line)
    }
}

/// Puts a `service_data` or `manufacturer_data` map into the scratch
/// advertisement.
struct DataSeed<'s> {
    scratch: &'s mut Scratch,
    /// Keys are company ids (manufacturer data), not UUIDs.
    company: bool,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut last: Option<Text<'de>> = None;
        while let Some((k, v)) = map.next_entry::<Text<'de>, Text<'de>>()? {
            let previous = last.as_ref().map(|l| l.0.as_ref());
            add_data(self.scratch, self.company, previous, &k.0, &v.0).ok_or_else(not_plain)?;
            last = Some(k);
        }
        Ok(())
    }
}

/// Puts one entry of a `service_data` (or, with `company`, `manufacturer_data`)
/// map into the scratch advertisement; `None` when the map is not plain.
fn add_data(
    scratch: &mut Scratch,
    company: bool,
    previous: Option<&str>,
    key: &str,
    hex: &str,
) -> Option<()> {
    // `Line`'s maps put keys in byte order, the last of a repeated key winning,
    // and `frame` splits `KEY=HEX` at the first `=`: the same as the line's own
    // order only when keys rise and hold no `=`.
    if previous.is_some_and(|p| p >= key) || key.contains('=') {
        return None;
    }
    let Scratch { adv, spare, .. } = scratch;
    let mut bytes = take_buffer(spare);
    plain_hex(hex, &mut bytes)?;
    // Four hex digits, the usual spelling, read here; every other one by the
    // functions `frame` uses.
    let short = four_hex(key);
    if company {
        let id = match short {
            Some(id) => id,
            None => parse_u16("company id", key).ok()?,
        };
        adv.manufacturer_data.push((id, bytes));
    } else {
        let uuid = match short {
            Some(id) => uuid16(id),
            None => parse_uuid(key).ok()?,
        };
        adv.service_data.push((uuid, bytes));
    }
    Some(())
}

/// Reads the commonest plain line by hand, as [`LineSeed`] reads it, at a
/// fraction of serde_json's cost: an object of `mac`, `name`, `key`,
/// `service_data` and `manufacturer_data`, each once, whose strings hold no
/// escape and no control character. `None` for anything else (nulls, escapes,
/// characteristics, numbers, bad syntax), which [`LineSeed`] then reads, from a
/// reset scratch. Held equal to it by
/// `decode::cli::tests::hand_read_lines_are_read_as_serde_json_reads_them`.
fn scan_plain_line<'de>(text: &'de str, scratch: &mut Scratch) -> Option<PlainLine<'de>> {
    let mut s = Scan { text, pos: 0 };
    let mut line = PlainLine::default();
    let mut seen = 0u8;
    s.token(b'{')?;
    if !s.closes()? {
        loop {
            let field = s.string()?;
            s.token(b':')?;
            let bit = match field {
                "mac" => 1,
                "name" => 2,
                "key" => 4,
                "service_data" => 8,
                "manufacturer_data" => 16,
                _ => return None,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match bit {
                1 => line.mac = Some(Text(Cow::Borrowed(s.string()?))),
                2 => line.name = Some(Text(Cow::Borrowed(s.string()?))),
                4 => line.key = Some(Text(Cow::Borrowed(s.string()?))),
                _ => {
                    s.token(b'{')?;
                    if !s.closes()? {
                        let mut previous = None;
                        loop {
                            let key = s.string()?;
                            s.token(b':')?;
                            let hex = s.string()?;
                            add_data(scratch, bit == 16, previous, key, hex)?;
                            previous = Some(key);
                            if !s.next_or_close()? {
                                break;
                            }
                        }
                    }
                }
            }
            if !s.next_or_close()? {
                break;
            }
        }
    }
    s.blank();
    (s.pos == text.len()).then_some(line)
}

/// A position in a line being read by [`scan_plain_line`].
struct Scan<'de> {
    text: &'de str,
    pos: usize,
}

impl<'de> Scan<'de> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Skips JSON's white space (the only bytes serde_json skips).
    fn blank(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// White space, then `byte`.
    fn token(&mut self, byte: u8) -> Option<()> {
        self.blank();
        if self.peek()? != byte {
            return None;
        }
        self.pos += 1;
        Some(())
    }

    /// After an opening brace: whether the object closes at once (`{}`).
    fn closes(&mut self) -> Option<bool> {
        self.blank();
        let closes = self.peek()? == b'}';
        if closes {
            self.pos += 1;
        }
        Some(closes)
    }

    /// After a member: `true` for a comma (another member follows), `false` for
    /// the closing brace.
    fn next_or_close(&mut self) -> Option<bool> {
        self.blank();
        let next = match self.peek()? {
            b',' => true,
            b'}' => false,
            _ => return None,
        };
        self.pos += 1;
        Some(next)
    }

    /// A string with no escape and no control character (which serde_json
    /// refuses), borrowed from the line.
    fn string(&mut self) -> Option<&'de str> {
        self.token(b'"')?;
        let rest = self.text.as_bytes().get(self.pos..)?;
        let len = string_end(rest)?;
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        // Both ends are next to a quote, so on character boundaries.
        let s = self.text.get(self.pos..self.pos + len)?;
        self.pos += len + 1;
        Some(s)
    }
}

/// A `characteristic` map of at most one entry.
struct OneCharacteristic;

impl<'de> DeserializeSeed<'de> for OneCharacteristic {
    type Value = Option<(Text<'de>, Text<'de>)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OneCharacteristic {
    type Value = Option<(Text<'de>, Text<'de>)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let first = map.next_entry::<Text<'de>, Text<'de>>()?;
        if first.as_ref().is_some_and(|(k, _)| k.0.contains('='))
            || map.next_key::<de::IgnoredAny>()?.is_some()
        {
            return Err(not_plain());
        }
        Ok(first)
    }
}

/// Decodes a plain `--stdin` line as [`line_input`] and [`frame`] would, without
/// allocating, into `scratch.decoded`; `None`, with the decoder untouched, for a
/// line that is not plain or would be an error before the decoder (those go the
/// long way).
fn decode_plain_line(
    text: &str,
    scratch: &mut Scratch,
    decoder: &mut Decoder,
) -> Option<Result<(), DecodeError>> {
    scratch.reset();
    let line = match scan_plain_line(text, scratch) {
        Some(line) => line,
        None => {
            scratch.reset();
            let mut json = serde_json::Deserializer::from_str(text);
            let line = LineSeed(&mut *scratch).deserialize(&mut json).ok()?;
            json.end().ok()?;
            line
        }
    };
    let address = match &line.mac {
        Some(m) => match plain_address(&m.0) {
            Some(a) => a,
            None => m.0.parse::<DeviceAddress>().ok()?,
        },
        None => DeviceAddress::default(),
    };
    let key = match &line.key {
        Some(k) => Some(plain_key(&k.0)?),
        None => None,
    };
    let Scratch {
        adv,
        note,
        spare_name,
        decoded,
        ..
    } = scratch;
    if let Some((uuid, hex)) = &line.characteristic {
        if !adv.service_data.is_empty() || !adv.manufacturer_data.is_empty() {
            return None;
        }
        if key.is_some() && line.mac.is_none() {
            return None;
        }
        note.characteristic = parse_uuid(&uuid.0).ok()?;
        note.value.clear();
        plain_hex(&hex.0, &mut note.value)?;
        note.address = address;
        if let Some(k) = key {
            decoder.set_key(address, k);
        }
        return Some(decoder.decode_notification_into(note, decoded));
    }
    if adv.service_data.is_empty() && adv.manufacturer_data.is_empty() {
        return None;
    }
    adv.address = address;
    if let Some(name) = &line.name {
        let mut s = std::mem::take(spare_name);
        s.clear();
        s.push_str(&name.0);
        adv.local_name = Some(s);
    }
    if let Some(k) = key {
        if line.mac.is_none() {
            adv.address = super::embedded_mac(adv)?;
        }
        decoder.set_key(adv.address, k);
    }
    Some(decoder.decode_advertisement_into(adv, decoded))
}

/// `--stdin`: one JSON input per line, one JSON result per line; state (keys,
/// counters, packet ids) carries from line to line as in the daemon. Blank lines
/// are skipped.
///
/// Results are buffered, not written line by line (a write per line cost about 150
/// times the decode): they go out when the buffer fills, at the end, and whenever
/// no whole input line is left to read without waiting, so that a tool that writes
/// one line and waits for its answer still gets it at once. A line that lies whole
/// in the read buffer is decoded where it lies; only one cut by the buffer's end
/// is copied out first.
pub fn run_stdin(input: impl Read, mut out: impl Write) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Io(e.to_string());
    let mut input = BufReader::with_capacity(STDIN_BUFFER, input);
    let mut decoder = Decoder::new();
    let mut scratch = Scratch::default();
    // Room for a long line from the start, so that it grows only for longer ones.
    let mut cut_line = String::with_capacity(1024);
    // Answers not yet written.
    let mut pending = Vec::with_capacity(STDIN_BUFFER + 4096);
    loop {
        let buffered = input.buffer();
        // A line that is not UTF-8 goes the way below, which reports it as before.
        let whole = newline(buffered)
            .and_then(|end| buffered.get(..=end))
            .and_then(|line| std::str::from_utf8(line).ok());
        let used = match whole {
            Some(line) => {
                answer_line(line, &mut scratch, &mut decoder, &mut pending);
                line.len()
            }
            None => {
                // The next read may block on the writer of stdin: answer what we
                // have first.
                out.write_all(&pending).map_err(io)?;
                pending.clear();
                out.flush().map_err(io)?;
                cut_line.clear();
                if input.read_line(&mut cut_line).map_err(io)? == 0 {
                    break;
                }
                answer_line(&cut_line, &mut scratch, &mut decoder, &mut pending);
                0
            }
        };
        input.consume(used);
        if pending.len() >= STDIN_BUFFER {
            out.write_all(&pending).map_err(io)?;
            pending.clear();
        }
    }
    out.write_all(&pending).map_err(io)?;
    out.flush().map_err(io)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each zero byte of `x` (and perhaps of bytes above a zero one,
/// through the borrow, so only the lowest mark is exact).
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The first byte of `bytes` that `found` marks, looked for eight bytes at a time:
/// `found` takes eight bytes (the first in the lowest bits) and sets the high bit
/// of each byte it looks for, exactly for the lowest one; `is` says the same of one
/// byte, for the bytes after the last whole word.
fn first_marked(
    bytes: &[u8],
    found: impl Fn(u64) -> u64,
    is: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let marks = found(u64::from_le_bytes(word));
        if marks != 0 {
            return Some(at + marks.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    rest.iter().position(|&b| is(b)).map(|i| at + i)
}

/// The index of the first `\n` in `bytes`.
fn newline(bytes: &[u8]) -> Option<usize> {
    first_marked(
        bytes,
        |w| zero_bytes(w ^ (ONES * u64::from(b'\n'))),
        |b| b == b'\n',
    )
}

/// Where a JSON string's text stops: the first `"`, `\\` or control character.
fn string_end(bytes: &[u8]) -> Option<usize> {
    first_marked(
        bytes,
        |w| {
            // A quote or a backslash is a zero byte of the XOR; a byte below 0x20
            // sets its high bit when 0x20 is taken from it (bytes from 0x80 up are
            // kept out by `!w`). Each borrows only from the bytes above it, so the
            // lowest mark of the three is exact.
            zero_bytes(w ^ (ONES * u64::from(b'"')))
                | zero_bytes(w ^ (ONES * u64::from(b'\\')))
                | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS)
        },
        |b| b == b'"' || b == b'\\' || b < 0x20,
    )
}

/// Appends the answer to one `--stdin` line, and a newline, to `out`; nothing for a
/// blank line.
fn answer_line(line: &str, scratch: &mut Scratch, decoder: &mut Decoder, out: &mut Vec<u8>) {
    if !line.starts_with('{') && line.trim().is_empty() {
        return;
    }
    let answer = match decode_plain_line(line, scratch, decoder) {
        Some(answer) => answer.map_err(CliError::from),
        None => line_input(line).and_then(|i| {
            let f = frame(&i, decoder)?;
            Ok(decoder.decode_into(&f, &mut scratch.decoded)?)
        }),
    };
    match answer {
        Ok(()) => write_json(&scratch.decoded, out),
        Err(e) => {
            // What `json!({"error": ..})` prints.
            out.extend_from_slice(b"{\"error\":");
            let _ = serde_json::to_writer(&mut *out, &e.to_string());
            out.push(b'}');
        }
    }
    out.push(b'\n');
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

    /// The bench's adverts (`benches/peers/decode_stdin.py`): BTHome v2 plain with
    /// a packet id that changes every frame, and Ruuvi RAWv2, alternating.
    fn bench_lines(n: usize) -> String {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    format!(
                        "{{\"mac\": \"54:48:E6:8F:80:A5\", \"name\": \"ATC_8F80A5\", \"service_data\": {{\"fcd2\": \"4000{:02x}016402ca0903bf13\"}}}}\n",
                        (i / 2) % 256
                    )
                } else {
                    "{\"mac\": \"54:48:E6:8F:80:A5\", \"manufacturer_data\": {\"0499\": \"0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F\"}}\n".to_owned()
                }
            })
            .collect()
    }

    /// One answer line as `run_stdin` prints it.
    fn answer(a: Result<super::Decoded, super::CliError>) -> String {
        let mut out = Vec::new();
        match a {
            Ok(d) => super::write_json(&d, &mut out),
            Err(e) => {
                out = serde_json::json!({"error": e.to_string()})
                    .to_string()
                    .into()
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn addresses_are_read_and_written_as_model_does() {
        use super::{DeviceAddress, plain_address, write_address};
        for s in [
            "54:48:E6:8F:80:A5",
            "54-48-e6-8f-80-a5",
            "00:11:22:33:44:ff",
            "ff:FF:00-01:aB:9c",
            "54:48:E6:8F:80:A",
            "54:48:E6:8F:80:A55",
            "54:48:E6:8F:80A:5",
            "54:48:E6:8F:80_A5",
            "+4:48:E6:8F:80:A5",
            "54:48:E6:8F:80:G5",
            "5:448:E6:8F:80:A5",
            "54:48:E6:8F:80:\u{e9}",
        ] {
            let model = s.parse::<DeviceAddress>().ok();
            let plain = plain_address(s);
            // The fast reader takes a subset, and agrees where it takes it.
            assert!(plain.is_none() || plain == model, "{s}");
            if s.len() == 17
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'-')
            {
                assert_eq!(plain, model, "{s}");
            }
            if let Some(a) = model {
                let mut out = Vec::new();
                write_address(&a, &mut out);
                assert_eq!(String::from_utf8(out).unwrap(), format!("\"{a}\""));
            }
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        use super::super::Decoded;
        use super::write_json;
        for s in [
            "plain",
            "",
            "a\"b",
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "del\u{7f}",
            "\u{1f}",
            "caf\u{e9} \u{2028}",
        ] {
            let d = Decoded {
                format: "bthome_v2",
                events: vec![super::super::Event {
                    kind: "button",
                    detail: s.to_owned().into(),
                }],
                ..Decoded::default()
            };
            let mut out = Vec::new();
            write_json(&d, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                super::to_json(&d).to_string(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        let check = |n: f64| {
            let mut out = Vec::new();
            super::write_number(n, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&n).unwrap(),
                "{n:e} ({:#x})",
                n.to_bits()
            );
        };
        // The digits path is taken for a sensor's values, and not outside its range.
        assert_eq!(super::short_decimal(25.06), Some((2506, 2)));
        assert_eq!(super::short_decimal(-0.004), Some((4, 3)));
        assert_eq!(super::short_decimal(1013.0), Some((1013, 0)));
        assert_eq!(super::short_decimal(0.1 + 0.2), None);
        assert_eq!(super::short_decimal(1e-5), None);
        // What the decoders make: raw integers of one to three bytes times a
        // factor, rounded to its digits (`gatt::round_to`), both signs.
        for (factor, digits) in [(1.0, 0), (0.1, 1), (0.01, 2), (0.001, 3), (0.35, 2)] {
            for raw in (0..65_536).chain((65_536..1 << 24).step_by(251)) {
                let v = super::super::gatt::round_to(f64::from(raw) * factor, digits);
                check(v);
                check(-v);
            }
        }
        // Ruuvi's scalings, and Govee's and the Xiaomi family's divisions.
        for raw in -32_768..32_768 {
            let raw = f64::from(raw);
            for v in [
                raw * 5.0 / 1000.0,
                raw * 25.0 / 10_000.0,
                (raw + 50_000.0) / 100.0,
                raw / 1000.0,
                (raw + 1600.0) / 1000.0,
                raw / 100.0,
                raw / 10.0,
                raw / 2.0 - 40.0,
                raw * 1000.0 / 1024.0,
            ] {
                check(v);
            }
        }
        // Decimals of one to six places over the whole range, and their
        // neighbouring doubles; the edges of the range; any bit pattern.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..60_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let places = (x % 7) as i32;
            let k = (x >> 8) % 1_000_000_000_000_000;
            // Over the whole range, and below the 4e9 the digits path takes.
            for v in [
                k as f64 / 10f64.powi(places),
                (k % 4_000_000_000_000_000) as f64 / 10f64.powi(places + 6),
            ] {
                check(v);
                check(-v);
                check(f64::from_bits(v.to_bits() + 1));
                check(f64::from_bits(v.to_bits().saturating_sub(1)));
            }
            let any = f64::from_bits(x);
            if any.is_finite() {
                check(any);
            }
        }
        for v in [
            0.0,
            -0.0,
            1e-4,
            9.999e-5,
            1e-5,
            1e-6,
            1e-7,
            0.000123,
            1e15,
            999_999_999_999_999.0,
            4e9,
            3_999_999_999.999_999,
            4_294_967_295.999_999,
            0.000_100_000_1,
            0.5,
            2.5,
            1e16,
            1e17,
            123_456_789_012_345.6,
            0.1,
            0.2,
            0.3,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            check(v);
            check(-v);
        }
    }

    #[test]
    fn string_ends_are_found_as_byte_by_byte() {
        let special = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
        // Every byte value at every place of the first word, and past it, among
        // fillers next to the special ones.
        for filler in [
            b'a', b'!', b'#', b'[', b']', b' ', 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ] {
            for len in 0..20 {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut bytes = vec![filler; len];
                        bytes[at] = b;
                        let want = bytes.iter().position(|&b| special(b));
                        assert_eq!(super::string_end(&bytes), want, "{bytes:?}");
                        // A second special byte above the first must not move it.
                        for (later, second) in [(1, b'"'), (2, 0x00), (5, b'\\'), (7, 0x1f)] {
                            if at + later < len {
                                bytes[at + later] = second;
                                let want = bytes.iter().position(|&b| special(b));
                                assert_eq!(super::string_end(&bytes), want, "{bytes:?}");
                                bytes[at + later] = filler;
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn newlines_and_four_digit_keys_are_found_as_before() {
        // The word-at-a-time search finds the first newline wherever it lies,
        // among bytes that differ from it by one bit or have the high bit set.
        for len in 0..40 {
            for filler in [b'a', b'\n' ^ 0x80, b'\x0b', b'\x08', 0xff, 0x00, b'{'] {
                for at in (0..len).map(Some).chain([None]) {
                    let mut bytes = vec![filler; len];
                    if let Some(i) = at {
                        bytes[i] = b'\n';
                        if i + 3 < len {
                            bytes[i + 3] = b'\n';
                        }
                    }
                    let want = bytes.iter().position(|&b| b == b'\n');
                    assert_eq!(super::newline(&bytes), want, "{bytes:?}");
                }
            }
        }
        for n in 0..=u16::MAX {
            for key in [format!("{n:04x}"), format!("{n:04X}")] {
                assert_eq!(super::four_hex(&key), Some(n));
                assert_eq!(super::parse_u16("k", &key), Ok(n));
                assert_eq!(super::parse_uuid(&key), Ok(crate::sensor::uuid16(n)));
            }
        }
        for key in [
            "", "fcd", "fcd2 ", " fcd", "0xfc", "fcdg", "+fcd", "fcd2a", "\u{e9}cd",
        ] {
            assert_eq!(super::four_hex(key), None, "{key:?}");
        }
    }

    #[test]
    fn hand_read_lines_are_read_as_serde_json_reads_them() {
        use super::{LineSeed, PlainLine, Scratch, scan_plain_line};
        use serde::de::DeserializeSeed;
        type Read = (
            [Option<String>; 3],
            Vec<(uuid::Uuid, Vec<u8>)>,
            Vec<(u16, Vec<u8>)>,
        );
        let read = |line: PlainLine<'_>, scratch: &Scratch| -> Read {
            let text = |t: Option<super::Text<'_>>| t.map(|t| t.0.into_owned());
            (
                [text(line.mac), text(line.name), text(line.key)],
                scratch.adv.service_data.clone(),
                scratch.adv.manufacturer_data.clone(),
            )
        };
        let by_serde = |line: &str| {
            let mut scratch = Scratch::default();
            let mut json = serde_json::Deserializer::from_str(line);
            let l = LineSeed(&mut scratch).deserialize(&mut json).ok()?;
            json.end().ok()?;
            if l.characteristic.is_some() {
                return None;
            }
            Some(read(l, &scratch))
        };
        let by_hand = |line: &str| {
            let mut scratch = Scratch::default();
            let l = scan_plain_line(line, &mut scratch)?;
            Some(read(l, &scratch))
        };
        let batch = include_str!("testdata/stdin_batch.jsonl");
        let bench = bench_lines(4);
        let mut lines: Vec<String> = batch
            .lines()
            .chain(bench.lines())
            .map(str::to_owned)
            .collect();
        lines.extend([
            "{}".to_owned(),
            " { \"mac\" :\"54:48:E6:8F:80:A5\"\t,\r\n\"service_data\":{ } } ".to_owned(),
            "{\"service_data\":{\"fcd2\":\"40\",\"fcd3\":\"41\"},\"manufacturer_data\":{\"0499\":\"05\"}}".to_owned(),
        ]);
        // Every base line, and each with one byte of JSON syntax, an escape, a
        // control character, a non-ASCII letter or white space put in, or a byte
        // taken out, at every place.
        let mut variants = Vec::new();
        for base in lines.iter().filter(|l| l.len() < 200) {
            variants.push(base.clone());
            for (i, _) in base.char_indices().chain([(base.len(), ' ')]) {
                for insert in [
                    " ", "\t", "\n", "\"", "\\", "\u{1}", ",", "}", "{", ":", "=", "\u{e9}", "null",
                ] {
                    let mut v = base.clone();
                    v.insert_str(i, insert);
                    variants.push(v);
                }
                let mut v = base.clone();
                if i < v.len() {
                    v.remove(i);
                    variants.push(v);
                }
            }
        }
        let mut hand = 0;
        for v in &variants {
            if let Some(got) = by_hand(v) {
                hand += 1;
                assert_eq!(Some(got), by_serde(v), "{v:?}");
            }
        }
        // The bench's lines and most plain lines are read by hand.
        assert!(by_hand(bench.lines().next().unwrap()).is_some());
        assert!(by_hand(bench.lines().nth(1).unwrap()).is_some());
        assert!(hand > variants.len() / 10, "{hand} of {}", variants.len());
    }

    #[test]
    fn model_names_need_no_escaping() {
        use crate::model::{Quantity, SpecialValue, Unit, Value};
        // `write_json` writes these between quotes as they are.
        let statuses = SpecialValue::ALL
            .iter()
            .map(|s| Value::Special(*s).status())
            .chain([Value::Number(1.0).status()]);
        for s in Quantity::ALL
            .iter()
            .map(|q| q.as_str())
            .chain(Unit::ALL.iter().map(|u| u.ucum()))
            .chain(statuses)
        {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn stdin_batch_answers_are_unchanged() {
        // Varied lines, plain and not, well-formed and not, with state carried from
        // line to line (keys, replays, repeated packet ids); the answers were
        // printed by the build before plain lines took their own path
        // (`carehub decode --stdin < stdin_batch.jsonl`, commit 3f717a2).
        let input = include_str!("testdata/stdin_batch.jsonl");
        let expected = include_str!("testdata/stdin_batch.expected.jsonl");
        let mut out = Vec::new();
        run_stdin(input.as_bytes(), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        for (i, (got, want)) in out.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "answer {}", i + 1);
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn plain_lines_get_the_answers_of_the_long_way() {
        use super::super::Decoder;
        use super::{Scratch, decode_input, decode_plain_line, line_input};
        let batch = include_str!("testdata/stdin_batch.jsonl");
        let bench = bench_lines(600);
        // Two decoders kept in step: one only ever goes the long way.
        let (mut long, mut short) = (Decoder::new(), Decoder::new());
        let mut scratch = Scratch::default();
        let mut plain = 0;
        for (i, line) in batch.lines().chain(bench.lines()).enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let want = answer(line_input(line).and_then(|i| decode_input(&i, &mut long)));
            let got = match decode_plain_line(line, &mut scratch, &mut short) {
                Some(a) => {
                    plain += 1;
                    answer(
                        a.map(|()| scratch.decoded.clone())
                            .map_err(super::CliError::from),
                    )
                }
                None => answer(line_input(line).and_then(|i| decode_input(&i, &mut short))),
            };
            assert_eq!(got, want, "line {}: {line}", i + 1);
        }
        // Every bench line and about half of the batch are plain.
        assert!(plain >= 600 + 45, "{plain} plain lines");
    }

    #[test]
    fn plain_stdin_lines_allocate_nothing() {
        use crate::test_alloc::allocations;
        // The bench's lines through the whole of `--stdin`, parsing, decoding and
        // writing: what a run allocates must not grow with its lines.
        let run = |n: usize| {
            let input = bench_lines(n);
            let mut out = Vec::with_capacity(4 << 20);
            let before = allocations();
            run_stdin(input.as_bytes(), &mut out).unwrap();
            let made = allocations() - before;
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), n);
            made
        };
        let (short, long) = (run(200), run(2000));
        // Buffers made once per run (reader, writer, line, scratch frame and
        // result, the decoder's device), none per line.
        assert_eq!(
            long, short,
            "{long} allocations for 2000 lines, {short} for 200"
        );
        assert!(long <= 32, "{long} allocations for a run");
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
