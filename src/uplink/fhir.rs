//! The optional FHIR R4 payload: a transaction Bundle of Observations following the
//! HL7 Personal Health Device (PHD) implementation guide.
//!
//! Each reading becomes one Observation with the MDC code (ISO/IEEE 11073-10101)
//! and the LOINC vital-signs code, a UCUM `valueQuantity`, the sensor as `device`
//! and the gateway in the `observation-gatewayDevice` extension, and the reading id
//! as `identifier`, so that a server receiving the same reading twice keeps one
//! (`ifNoneExist`). A special value becomes `dataAbsentReason` and no value: a
//! sensor's "not a number" is never turned into a number. Devices are conditional
//! updates on their identifier, and Observations refer to them by the same
//! conditional URL, so the Bundle needs no server-side ids.

use serde_json::{Value as Json, json};

use crate::model::{Quantity, SpecialValue, Subject, Value};

use super::outgoing::OutgoingReading;

/// MDC code system (ISO/IEEE 11073-10101 nomenclature).
pub const MDC: &str = "urn:iso:std:iso:11073:10101";
pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
/// Bluetooth device addresses as Device identifiers (PHD IG).
pub const BLUETOOTH: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
pub const GATEWAY_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";
pub const DATA_ABSENT: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
/// Where no MDC/LOINC code exists (room data), carehub's own quantity names.
pub const CAREHUB_QUANTITY: &str = "urn:carehub:quantity";
/// Pseudonymous resident references, as `Patient` identifiers.
pub const CAREHUB_RESIDENT: &str = "urn:carehub:resident-reference";
pub const CAREHUB_GATEWAY: &str = "urn:carehub:gateway";
pub const CAREHUB_ROOM: &str = "urn:carehub:room";
/// The reading id as an Observation identifier.
pub const URN_IETF: &str = "urn:ietf:rfc:3986";

/// The MDC code, its reference id, and the LOINC code of a quantity, where the PHD
/// IG (and the LOINC vital-signs panel) gives one.
pub fn codes(q: Quantity) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    Some(match q {
        Quantity::HeartRate => ("147842", "MDC_ECG_HEART_RATE", Some("8867-4")),
        Quantity::PulseRate => ("149530", "MDC_PULS_OXIM_PULS_RATE", Some("8867-4")),
        Quantity::Spo2 => ("150456", "MDC_PULS_OXIM_SAT_O2", Some("2708-6")),
        Quantity::BodyTemperature => ("150364", "MDC_TEMP_BODY", Some("8310-5")),
        Quantity::SystolicPressure => ("150021", "MDC_PRESS_BLD_NONINV_SYS", Some("8480-6")),
        Quantity::DiastolicPressure => ("150022", "MDC_PRESS_BLD_NONINV_DIA", Some("8462-4")),
        Quantity::MeanArterialPressure => ("150023", "MDC_PRESS_BLD_NONINV_MEAN", Some("8478-0")),
        Quantity::BodyWeight => ("188736", "MDC_MASS_BODY_ACTUAL", Some("29463-7")),
        Quantity::BodyHeight => ("188740", "MDC_LEN_BODY_ACTUAL", Some("8302-2")),
        Quantity::BodyMassIndex => ("188752", "MDC_RATIO_MASS_BODY_LEN_SQ", Some("39156-5")),
        Quantity::BloodGlucose => ("160184", "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", None),
        Quantity::RespirationRate => ("151562", "MDC_RESP_RATE", Some("9279-1")),
        _ => return None,
    })
}

/// The `data-absent-reason` code for a special value.
pub fn data_absent_reason(s: SpecialValue) -> &'static str {
    match s {
        SpecialValue::NotANumber => "not-a-number",
        SpecialValue::PositiveInfinity => "positive-infinity",
        SpecialValue::NegativeInfinity => "negative-infinity",
        SpecialValue::Unavailable => "unknown",
        SpecialValue::NotAtResolution | SpecialValue::Reserved | SpecialValue::Unsuccessful => {
            "error"
        }
    }
}

/// The IEEE EUI-48 form of a Bluetooth address (`A4-C1-38-12-34-56`), as the PHD IG
/// writes Device identifiers.
fn eui48(address: &crate::model::DeviceAddress) -> String {
    address.to_string().replace(':', "-")
}

fn device_url(address: &str) -> String {
    format!("Device?identifier={BLUETOOTH}|{address}")
}

fn gateway_url(gateway: &str) -> String {
    format!("Device?identifier={CAREHUB_GATEWAY}|{gateway}")
}

/// The placeholder `fullUrl` of a Device entry (`urn:uuid:`, a UUIDv8 derived
/// from the Device's identifier, the same in every Bundle), by which the
/// Observations refer to it. A server resolves such a placeholder in every
/// transaction; a conditional reference (`Device?identifier=...`) only some
/// servers resolve (Medplum stores it as written; docs/mqtt.md).
fn placeholder(system: &str, value: &str) -> String {
    // FNV-1a, twice with different offsets: 128 bits, no RNG, no crate.
    let fnv = |offset: u64| {
        let mut h = offset;
        for b in system.bytes().chain([b'|']).chain(value.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    let mut bytes = [0u8; 16];
    let (hi, lo) = bytes.split_at_mut(8);
    hi.copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    lo.copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    let mut b = uuid::Uuid::from_bytes(bytes).into_bytes();
    // Version 8 (custom), RFC 9562 variant.
    if let Some(x) = b.get_mut(6) {
        *x = (*x & 0x0f) | 0x80;
    }
    if let Some(x) = b.get_mut(8) {
        *x = (*x & 0x3f) | 0x80;
    }
    format!("urn:uuid:{}", uuid::Uuid::from_bytes(b))
}

/// A reference to a Device of the Bundle, by its placeholder (a reader that
/// does not process the Bundle as a transaction finds the Device by `fullUrl`).
fn device_ref(placeholder: String) -> Json {
    json!({ "reference": placeholder })
}

/// A sensor's placeholder: a fixed UUIDv8 prefix and its Bluetooth address as
/// the last 12 hex digits (`urn:uuid:ca4e4bb0-0000-8000-8000-a4c138123456`),
/// which compresses well where a sensor appears in many Observations.
fn sensor_placeholder(address: &crate::model::DeviceAddress) -> String {
    let mut b = [
        0xca, 0x4e, 0x4b, 0xb0, 0, 0, 0x80, 0, 0x80, 0, 0, 0, 0, 0, 0, 0,
    ];
    if let Some(tail) = b.get_mut(10..) {
        tail.copy_from_slice(&address.0);
    }
    format!("urn:uuid:{}", uuid::Uuid::from_bytes(b))
}

fn gateway_entry(gateway: &str) -> Json {
    json!({
        "fullUrl": placeholder(CAREHUB_GATEWAY, gateway),
        "resource": {
            "resourceType": "Device",
            "identifier": [{ "system": CAREHUB_GATEWAY, "value": gateway }],
            "type": { "coding": [{ "system": MDC, "code": "531981", "display": "MDC_MOC_VMS_MDS_AHD" }] },
        },
        "request": { "method": "PUT", "url": gateway_url(gateway) },
    })
}

/// The transaction Bundle for one batch.
pub fn bundle(gateway: &str, readings: &[OutgoingReading<'_>]) -> Json {
    let mut entries = vec![gateway_entry(gateway)];
    let mut devices: Vec<crate::model::DeviceAddress> =
        readings.iter().map(|r| r.reading.device).collect();
    devices.sort();
    devices.dedup();
    for device in &devices {
        let address = eui48(device);
        entries.push(json!({
            "fullUrl": sensor_placeholder(device),
            "resource": {
                "resourceType": "Device",
                "identifier": [{ "system": BLUETOOTH, "value": address }],
            },
            "request": { "method": "PUT", "url": device_url(&address) },
        }));
    }
    for r in readings {
        entries.push(observation_entry(gateway, *r));
    }
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value: a missing key reads as Null; keys are written only into objects json! made just above"
)]
fn observation_entry(gateway: &str, r: OutgoingReading<'_>) -> Json {
    let reading = r.reading;
    let id = format!("urn:uuid:{}", reading.id);
    let unit = reading.unit.ucum();
    let mut coding = Vec::new();
    let mut vital = false;
    if let Some((mdc, ref_id, loinc)) = codes(reading.quantity) {
        coding.push(json!({ "system": MDC, "code": mdc, "display": ref_id }));
        if let Some(loinc) = loinc {
            coding.push(json!({ "system": LOINC, "code": loinc }));
            vital = true;
        }
    } else {
        coding.push(json!({ "system": CAREHUB_QUANTITY, "code": reading.quantity.as_str() }));
    }
    let mut obs = json!({
        "resourceType": "Observation",
        "identifier": [{ "system": URN_IETF, "value": id }],
        "status": "final",
        "code": { "coding": coding, "text": reading.quantity.label() },
        "effectiveDateTime": reading.taken_at().to_rfc3339(),
        "device": device_ref(sensor_placeholder(&reading.device)),
        "extension": [{
            "url": GATEWAY_EXTENSION,
            "valueReference": device_ref(placeholder(CAREHUB_GATEWAY, gateway)),
        }],
    });
    if vital {
        obs["category"] = json!([{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
        }] }]);
    }
    match (&reading.subject, r.resident_reference) {
        (Subject::Resident(_), Some(reference)) => {
            obs["subject"] = json!({ "type": "Patient", "identifier": { "system": CAREHUB_RESIDENT, "value": reference } });
        }
        (Subject::Room(room), _) => {
            obs["subject"] = json!({ "type": "Location", "identifier": { "system": CAREHUB_ROOM, "value": room } });
        }
        _ => {}
    }
    match reading.value {
        Value::Number(n) => {
            // FHIR strings may not be empty: a unit-less quantity (UCUM "1")
            // has no readable unit, so none is sent.
            let mut q = json!({ "value": n, "system": UCUM, "code": unit });
            let symbol = reading.unit.symbol();
            if !symbol.is_empty() {
                q["unit"] = json!(symbol);
            }
            obs["valueQuantity"] = q;
        }
        Value::Special(s) => {
            obs["dataAbsentReason"] =
                json!({ "coding": [{ "system": DATA_ABSENT, "code": data_absent_reason(s) }] });
        }
    }
    // No fullUrl: nothing in the Bundle refers to an Observation, and a
    // `urn:uuid:` fullUrl equal to the identifier's value is rewritten by a
    // server into the new resource's id wherever it appears, the identifier
    // and `ifNoneExist` included (Medplum did: a repeat was stored twice).
    json!({
        "resource": obs,
        "request": {
            "method": "POST",
            "url": "Observation",
            "ifNoneExist": format!("identifier={URN_IETF}|urn:uuid:{}", reading.id),
        },
    })
}

/// What is wrong with a Bundle, by the structure the PHD IG describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    /// A required element is missing or has the wrong type.
    #[error("entry {entry}: {what}")]
    Structure { entry: usize, what: String },
}

/// The path of the first empty string in `v`, if any.
fn empty_string(v: &Json, at: &str) -> Option<String> {
    match v {
        Json::String(s) if s.is_empty() => Some(at.to_owned()),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| empty_string(x, &format!("{at}[{i}]"))),
        Json::Object(fields) => fields
            .iter()
            .find_map(|(k, x)| empty_string(x, &format!("{at}.{k}"))),
        _ => None,
    }
}

/// Checks a Bundle against the PHD IG's structure: no empty strings; every Observation has a
/// reading-id identifier, an MDC (or carehub) code, exactly one of a UCUM
/// `valueQuantity` or a `dataAbsentReason`, a time, a device and a gateway that
/// resolve to Devices in the same Bundle; LOINC-coded ones carry `vital-signs`.
/// Used by the tests and by `docs/mqtt.md`'s example check.
#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value read by index: a missing key or index reads as Null, never a panic"
)]
pub fn validate(bundle: &Json) -> Result<usize, FhirError> {
    let err = |entry: usize, what: &str| FhirError::Structure {
        entry,
        what: what.to_owned(),
    };
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "transaction" {
        return Err(err(0, "not a transaction Bundle"));
    }
    // FHIR: a string has at least one character (a server refuses `""`).
    if let Some(path) = empty_string(bundle, "") {
        return Err(err(0, &format!("empty string at {path}")));
    }
    let entries = bundle["entry"]
        .as_array()
        .ok_or_else(|| err(0, "no entry array"))?;
    // Devices are referred to by their placeholder fullUrl, which every
    // server resolves within a transaction.
    let device_urls: Vec<&str> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Device")
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    let mut observations = 0;
    for (i, e) in entries.iter().enumerate() {
        let o = &e["resource"];
        if o["resourceType"] != "Observation" {
            continue;
        }
        observations += 1;
        let id = o["identifier"][0]["value"].as_str().unwrap_or_default();
        if o["identifier"][0]["system"] != URN_IETF || !id.starts_with("urn:uuid:") {
            return Err(err(i, "identifier is not the reading id"));
        }
        if e.get("fullUrl").is_some_and(|f| f == id) {
            return Err(err(
                i,
                "fullUrl equals the identifier (a server rewrites both)",
            ));
        }
        if e["request"]["ifNoneExist"]
            .as_str()
            .is_none_or(|s| !s.ends_with(id))
        {
            return Err(err(i, "request.ifNoneExist does not name the identifier"));
        }
        if o["status"] != "final" {
            return Err(err(i, "status is not final"));
        }
        if is_news2_total(o) {
            check_news2_total(o, &device_urls).map_err(|what| err(i, what))?;
            continue;
        }
        let coding = o["code"]["coding"]
            .as_array()
            .ok_or_else(|| err(i, "no code.coding"))?;
        let system_of = |s: &str| coding.iter().find(|c| c["system"] == s);
        let mdc = system_of(MDC);
        if mdc.is_none() && system_of(CAREHUB_QUANTITY).is_none() {
            return Err(err(i, "code has neither an MDC nor a carehub code"));
        }
        if let Some(mdc) = mdc {
            let code = mdc["code"].as_str().unwrap_or_default();
            let known = Quantity::ALL
                .iter()
                .filter_map(|q| codes(*q))
                .any(|(c, _, _)| c == code);
            if !known {
                return Err(err(i, "unknown MDC code"));
            }
        }
        if system_of(LOINC).is_some() && o["category"][0]["coding"][0]["code"] != "vital-signs" {
            return Err(err(
                i,
                "a LOINC vital sign without the vital-signs category",
            ));
        }
        match (o.get("valueQuantity"), o.get("dataAbsentReason")) {
            (Some(v), None) => {
                let code = v["code"].as_str().unwrap_or_default();
                if v["system"] != UCUM || crate::model::Unit::from_ucum(code).is_none() {
                    return Err(err(i, "valueQuantity is not a UCUM quantity"));
                }
                if !v["value"].is_number() {
                    return Err(err(i, "valueQuantity.value is not a number"));
                }
            }
            (None, Some(d)) => {
                if d["coding"][0]["system"] != DATA_ABSENT {
                    return Err(err(i, "dataAbsentReason is not from data-absent-reason"));
                }
            }
            _ => {
                return Err(err(
                    i,
                    "needs exactly one of valueQuantity or dataAbsentReason",
                ));
            }
        }
        if o["effectiveDateTime"].as_str().is_none() {
            return Err(err(i, "no effectiveDateTime"));
        }
        let device = o["device"]["reference"].as_str().unwrap_or_default();
        if !device_urls.contains(&device) {
            return Err(err(i, "device does not resolve to a Device in the Bundle"));
        }
        let gw = &o["extension"][0];
        if gw["url"] != GATEWAY_EXTENSION
            || !device_urls.contains(
                &gw["valueReference"]["reference"]
                    .as_str()
                    .unwrap_or_default(),
            )
        {
            return Err(err(i, "gateway extension does not resolve to a Device"));
        }
        if let Some(subject) = o.get("subject") {
            let system = &subject["identifier"]["system"];
            if *system != CAREHUB_RESIDENT && *system != CAREHUB_ROOM {
                return Err(err(i, "subject is not a pseudonymous reference or a room"));
            }
        }
    }
    Ok(observations)
}

/// SNOMED CT.
pub const SNOMED: &str = "http://snomed.info/sct";
/// SNOMED CT (UK edition): the Royal College of Physicians NEWS2 total score.
pub const NEWS2_TOTAL: &str = "1104051000000101";

/// The NEWS2 total score behind a NEWS2 alert (`news2`, `news2-single-3`) as a
/// transaction Bundle: the gateway as the Device that computed it, and one
/// Observation coded with SNOMED CT [`NEWS2_TOTAL`], `valueInteger` the total,
/// `effectiveDateTime` when it was computed (the alert's raising), the resident
/// by pseudonymous reference only, the scored readings as `derivedFrom` (their
/// reading-id identifiers, as sent on the readings topic), and, for a partial
/// score, a `note` naming the parameters it lacked. Its identifier is the
/// alert's id, so an announcement again is one Observation on the server.
/// `None` for any other alert, or one without a score or a resident.
#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value: keys are written only into objects json! made just above"
)]
pub fn news2_bundle(gateway: &str, alert: &crate::store::AlertRecord) -> Option<Json> {
    if alert.rule != "news2" && alert.rule != "news2-single-3" {
        return None;
    }
    let score = alert.score?;
    let reference = alert.resident_reference.as_deref()?;
    let id = format!("urn:uuid:{}", alert.uuid);
    let mut obs = json!({
        "resourceType": "Observation",
        "identifier": [{ "system": URN_IETF, "value": id }],
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "survey",
        }] }],
        "code": { "coding": [{ "system": SNOMED, "code": NEWS2_TOTAL }], "text": "NEWS2 total score" },
        "subject": { "type": "Patient", "identifier": { "system": CAREHUB_RESIDENT, "value": reference } },
        "effectiveDateTime": alert.raised_at.to_rfc3339(),
        "valueInteger": score,
        "device": device_ref(placeholder(CAREHUB_GATEWAY, gateway)),
        "extension": [{
            "url": GATEWAY_EXTENSION,
            "valueReference": device_ref(placeholder(CAREHUB_GATEWAY, gateway)),
        }],
    });
    if !alert.reading_ids.is_empty() {
        obs["derivedFrom"] = alert
            .reading_ids
            .iter()
            .map(|r| json!({ "identifier": { "system": URN_IETF, "value": format!("urn:uuid:{r}") } }))
            .collect();
    }
    if alert.partial {
        obs["note"] = json!([{ "text": format!(
            "Partial score: not scored (missing, older than the clinical window or implausible): {}",
            alert.missing.join(", ")
        ) }]);
    }
    Some(json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            gateway_entry(gateway),
            {
                "resource": obs,
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": format!("identifier={URN_IETF}|{id}"),
                },
            },
        ],
    }))
}

/// An Observation coded as the NEWS2 total score.
#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value read by index: a missing key reads as Null, never a panic"
)]
fn is_news2_total(o: &Json) -> bool {
    o["code"]["coding"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["system"] == SNOMED && c["code"] == NEWS2_TOTAL)
    })
}

/// A NEWS2 total: an integer 0-20, a time, a resident by pseudonymous reference,
/// computed by a Device in the Bundle, and a note when it is partial.
#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value read by index: a missing key reads as Null; notes[0] only after a length check"
)]
fn check_news2_total(o: &Json, device_urls: &[&str]) -> Result<(), &'static str> {
    if o.get("valueQuantity").is_some() || o.get("dataAbsentReason").is_some() {
        return Err("a NEWS2 total is a valueInteger");
    }
    if o["valueInteger"].as_u64().is_none_or(|v| v > 20) {
        return Err("a NEWS2 total needs valueInteger 0 to 20");
    }
    if o["effectiveDateTime"].as_str().is_none() {
        return Err("no effectiveDateTime");
    }
    if o["subject"]["identifier"]["system"] != CAREHUB_RESIDENT
        || o["subject"]["identifier"]["value"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        return Err("a NEWS2 total's subject is not a pseudonymous resident reference");
    }
    let device = o["device"]["reference"].as_str().unwrap_or_default();
    if !device_urls.contains(&device) {
        return Err("device does not resolve to a Device in the Bundle");
    }
    if let Some(notes) = o.get("note")
        && notes[0]["text"].as_str().is_none_or(str::is_empty)
    {
        return Err("a note without text");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceAddress, Reading, ReadingId, ResidentId, Timestamp, Unit};

    fn reading(q: Quantity, value: Value, unit: Unit, subject: Subject) -> Reading {
        let at = Timestamp::from_unix_ms(1_763_930_467_123);
        Reading {
            id: ReadingId::new(at),
            device: DeviceAddress([0xA4, 0xC1, 0x38, 0, 0, 1]),
            subject,
            quantity: q,
            value,
            unit,
            measured_at: Some(at),
            received_at: at,
            clock_synced: true,
        }
    }

    #[test]
    fn every_quantity_and_special_value_makes_a_valid_bundle() {
        let mut readings = Vec::new();
        for q in Quantity::ALL {
            readings.push(reading(
                *q,
                Value::Number(1.5),
                Unit::One,
                Subject::Resident(ResidentId(1)),
            ));
        }
        for s in SpecialValue::ALL {
            readings.push(reading(
                Quantity::Spo2,
                Value::Special(*s),
                Unit::Percent,
                Subject::Room("4".into()),
            ));
        }
        for u in Unit::ALL {
            readings.push(reading(
                Quantity::Spo2,
                Value::Number(2.0),
                *u,
                Subject::Unassigned,
            ));
        }
        let out: Vec<_> = readings
            .iter()
            .map(|r| OutgoingReading {
                reading: r,
                resident_reference: Some("R-1"),
            })
            .collect();
        let b = bundle("gw-1", &out);
        assert_eq!(validate(&b), Ok(readings.len()));
    }

    /// A unit-less quantity (motion, counts) is UCUM `1` with no readable unit,
    /// never `"unit": ""`, which a FHIR server refuses (and a transaction with it).
    #[test]
    fn a_unitless_quantity_has_ucum_1_and_no_empty_unit() {
        let r = reading(
            Quantity::ALL[0],
            Value::Number(1.0),
            Unit::One,
            Subject::Resident(ResidentId(1)),
        );
        let out = [OutgoingReading {
            reading: &r,
            resident_reference: Some("R-1"),
        }];
        let mut b = bundle("gw-1", &out);
        let q = &b["entry"][2]["resource"]["valueQuantity"];
        assert_eq!(q["code"], "1");
        assert_eq!(q["system"], UCUM);
        assert!(q.get("unit").is_none(), "{q}");
        // The validator refuses the empty string the old bundles carried.
        b["entry"][2]["resource"]["valueQuantity"]["unit"] = json!("");
        assert!(
            matches!(validate(&b), Err(FhirError::Structure { what, .. }) if what.contains("empty string")),
        );
    }

    #[test]
    fn spo2_has_mdc_loinc_ucum_and_the_reading_id() {
        let r = reading(
            Quantity::Spo2,
            Value::Number(97.0),
            Unit::Percent,
            Subject::Resident(ResidentId(1)),
        );
        let b = bundle(
            "gw-1",
            &[OutgoingReading {
                reading: &r,
                resident_reference: Some("R-7f3a"),
            }],
        );
        let o = &b["entry"][2]["resource"];
        assert_eq!(o["code"]["coding"][0]["code"], "150456");
        assert_eq!(o["code"]["coding"][1]["code"], "2708-6");
        assert_eq!(o["valueQuantity"]["code"], "%");
        assert_eq!(o["identifier"][0]["value"], format!("urn:uuid:{}", r.id));
        assert_eq!(o["subject"]["identifier"]["value"], "R-7f3a");
    }

    #[test]
    fn nan_becomes_data_absent_reason_and_no_value() {
        let r = reading(
            Quantity::BodyTemperature,
            Value::Special(SpecialValue::NotANumber),
            Unit::Celsius,
            Subject::Resident(ResidentId(1)),
        );
        let b = bundle(
            "gw-1",
            &[OutgoingReading {
                reading: &r,
                resident_reference: Some("R-1"),
            }],
        );
        let o = &b["entry"][2]["resource"];
        assert!(o.get("valueQuantity").is_none());
        assert_eq!(o["dataAbsentReason"]["coding"][0]["code"], "not-a-number");
    }

    #[test]
    fn a_bundle_with_a_dangling_device_is_refused() {
        let r = reading(
            Quantity::Spo2,
            Value::Number(97.0),
            Unit::Percent,
            Subject::Resident(ResidentId(1)),
        );
        let mut b = bundle(
            "gw-1",
            &[OutgoingReading {
                reading: &r,
                resident_reference: Some("R-1"),
            }],
        );
        b["entry"][2]["resource"]["device"]["reference"] = json!("Device/unknown");
        assert!(validate(&b).is_err());
        let mut b2 = bundle(
            "gw-1",
            &[OutgoingReading {
                reading: &r,
                resident_reference: Some("R-1"),
            }],
        );
        b2["entry"][2]["resource"]["valueQuantity"]["code"] = json!("percent");
        assert!(validate(&b2).is_err());
    }
}
