//! Every flag combination of every GATT health characteristic, and truncation at
//! every length of every combination.
//!
//! Frames are built here field by field from the layouts in the GATT Specification
//! Supplement (the same layouts summarised in `../shared/notes/protocols.md`), as a
//! sensor would send them, with values chosen so that a wrong offset shows as a
//! wrong number. The IEEE-11073 encodings are the HL7 PHD guide's.

use super::gatt::{self, *};
use super::ieee11073::{encode_float, encode_sfloat};
use super::{AttrValue, DeviceDateTime};
use crate::model::{Quantity as Q, SpecialValue, Unit as U, Value};

const TIME: [u8; 7] = [0xEA, 0x07, 11, 23, 8, 30, 5]; // 2026-11-23 08:30:05
const DT: DeviceDateTime = DeviceDateTime {
    year: 2026,
    month: 11,
    day: 23,
    hour: 8,
    minute: 30,
    second: 5,
};

fn sf(v: f64, e: i8) -> [u8; 2] {
    encode_sfloat(v, e).unwrap().to_le_bytes()
}

type Expect = Vec<(Q, Option<f64>, U, Option<&'static str>)>;

/// Decodes `frame`, compares (quantity, number, unit, qualifier), then checks that
/// every shorter prefix is an error unless `valid_prefix` says the spec allows it.
fn check(
    c: u16,
    frame: &[u8],
    expected: &Expect,
    valid_prefix: impl Fn(usize) -> bool,
) -> super::Decoded {
    let d = gatt::decode(c, frame).unwrap_or_else(|e| panic!("{c:04x} {frame:02x?}: {e}"));
    let got: Expect = d
        .values
        .iter()
        .map(|v| (v.quantity, v.value.number(), v.unit, v.qualifier))
        .collect();
    assert_eq!(&got, expected, "{c:04x} {frame:02x?}");
    for len in 0..frame.len() {
        let r = gatt::decode(c, &frame[..len]);
        if !valid_prefix(len) {
            assert!(
                r.is_err(),
                "{c:04x} {frame:02x?} truncated to {len} decoded: {r:?}"
            );
        }
    }
    d
}

fn attr<'a>(d: &'a super::Decoded, key: &str) -> Option<&'a AttrValue> {
    d.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn events(d: &super::Decoded) -> Vec<&str> {
    d.events.iter().map(|e| e.detail.as_ref()).collect()
}

#[test]
fn heart_rate_every_flag_combination() {
    for flags in 0u8..32 {
        let mut f = vec![flags];
        let mut e: Expect = vec![];
        if flags & 1 != 0 {
            f.extend_from_slice(&300u16.to_le_bytes());
            e.push((Q::HeartRate, Some(300.0), U::PerMinute, None));
        } else {
            f.push(72);
            e.push((Q::HeartRate, Some(72.0), U::PerMinute, None));
        }
        if flags & 0x08 != 0 {
            f.extend_from_slice(&500u16.to_le_bytes());
            e.push((Q::EnergyExpended, Some(500.0), U::Kilojoule, None));
        }
        let base = f.len();
        if flags & 0x10 != 0 {
            // 1024/1024 s and 512/1024 s: exactly 1000 ms and 500 ms.
            for rr in [1024u16, 512] {
                f.extend_from_slice(&rr.to_le_bytes());
            }
            e.push((Q::RrInterval, Some(1000.0), U::Millisecond, None));
            e.push((Q::RrInterval, Some(500.0), U::Millisecond, None));
        }
        // With RR intervals, a frame cut between whole intervals is a valid frame,
        // as long as one interval is left (the flags announce at least one).
        let d = check(HEART_RATE_MEASUREMENT, &f, &e, |len| {
            flags & 0x10 != 0 && len >= base + 2 && (len - base) % 2 == 0
        });
        let contact = match (flags >> 1) & 3 {
            2 => Some(&AttrValue::Text("not_detected")),
            3 => Some(&AttrValue::Text("detected")),
            _ => None,
        };
        assert_eq!(attr(&d, "sensor_contact"), contact, "flags {flags:#04x}");
    }
}

#[test]
fn temperature_every_flag_combination_both_characteristics() {
    for c in [TEMPERATURE_MEASUREMENT, INTERMEDIATE_TEMPERATURE] {
        for flags in 0u8..8 {
            let mut f = vec![flags];
            let (v, unit) = if flags & 1 != 0 {
                (98.6, U::Fahrenheit)
            } else {
                (36.5, U::Celsius)
            };
            f.extend_from_slice(&encode_float(v, -1).unwrap().to_le_bytes());
            if flags & 2 != 0 {
                f.extend_from_slice(&TIME);
            }
            if flags & 4 != 0 {
                f.push(3); // ear
            }
            // Intermediate Temperature is the thermometer settling: its own
            // quantity, never a body temperature (issue 15).
            let q = if c == INTERMEDIATE_TEMPERATURE {
                Q::IntermediateTemperature
            } else {
                Q::BodyTemperature
            };
            let d = check(c, &f, &vec![(q, Some(v), unit, None)], |_| false);
            let want_time = (flags & 2 != 0).then_some(DT);
            assert_eq!(d.values[0].device_time, want_time);
            let site = (flags & 4 != 0).then_some(&AttrValue::Text("ear"));
            assert_eq!(attr(&d, "temperature_site"), site);
        }
    }
    // Temperature type 0 and 10 are not in the table: an error, not a guess.
    for bad in [0u8, 10] {
        let mut f = vec![0x04];
        f.extend_from_slice(&encode_float(36.5, -1).unwrap().to_le_bytes());
        f.push(bad);
        assert!(gatt::decode(TEMPERATURE_MEASUREMENT, &f).is_err());
    }
}

#[test]
fn blood_pressure_and_cuff_pressure_every_flag_combination() {
    for c in [BLOOD_PRESSURE_MEASUREMENT, INTERMEDIATE_CUFF_PRESSURE] {
        for flags in 0u8..32 {
            let kpa = flags & 1 != 0;
            let (unit, s, d_, m, e) = if kpa {
                (U::Kilopascal, 16.0, 10.7, 12.4, -1)
            } else {
                (U::MillimetreOfMercury, 120.0, 80.0, 93.0, 0)
            };
            let mut f = vec![flags];
            f.extend_from_slice(&sf(s, e));
            if c == INTERMEDIATE_CUFF_PRESSURE {
                // The cuff pressure sits in the systolic field; the others are NaN.
                f.extend_from_slice(&0x07FFu16.to_le_bytes());
                f.extend_from_slice(&0x07FFu16.to_le_bytes());
            } else {
                f.extend_from_slice(&sf(d_, e));
                f.extend_from_slice(&sf(m, e));
            }
            if flags & 2 != 0 {
                f.extend_from_slice(&TIME);
            }
            if flags & 4 != 0 {
                f.extend_from_slice(&sf(70.0, 0));
            }
            if flags & 8 != 0 {
                f.push(2);
            }
            if flags & 16 != 0 {
                // Body movement, cuff too loose, irregular pulse, pulse above range.
                f.extend_from_slice(&0x000Fu16.to_le_bytes());
            }
            let mut want: Expect = if c == INTERMEDIATE_CUFF_PRESSURE {
                vec![(Q::CuffPressure, Some(s), unit, None)]
            } else {
                vec![
                    (Q::SystolicPressure, Some(s), unit, None),
                    (Q::DiastolicPressure, Some(d_), unit, None),
                    (Q::MeanArterialPressure, Some(m), unit, None),
                ]
            };
            if flags & 4 != 0 {
                want.push((Q::PulseRate, Some(70.0), U::PerMinute, None));
            }
            let d = check(c, &f, &want, |_| false);
            let want_time = (flags & 2 != 0).then_some(DT);
            assert!(d.values.iter().all(|v| v.device_time == want_time));
            assert_eq!(
                attr(&d, "user_id"),
                (flags & 8 != 0).then_some(&AttrValue::Int(2))
            );
            let want_events: Vec<&str> = if flags & 16 != 0 {
                vec![
                    "body_movement",
                    "cuff_too_loose",
                    "irregular_pulse",
                    "pulse_rate_above_upper_limit",
                ]
            } else {
                vec![]
            };
            assert_eq!(events(&d), want_events, "{c:04x} flags {flags:#04x}");
        }
    }
}

#[test]
fn plx_spot_check_every_flag_combination() {
    for flags in 0u8..32 {
        let mut f = vec![flags];
        f.extend_from_slice(&sf(97.0, 0));
        f.extend_from_slice(&sf(70.0, 0));
        if flags & 1 != 0 {
            f.extend_from_slice(&TIME);
        }
        if flags & 2 != 0 {
            f.extend_from_slice(&(1u16 << 7).to_le_bytes()); // validated data
        }
        if flags & 4 != 0 {
            f.extend_from_slice(&[0x20, 0, 0]); // low perfusion
        }
        if flags & 8 != 0 {
            f.extend_from_slice(&sf(5.2, -1));
        }
        let mut want: Expect = vec![
            (Q::Spo2, Some(97.0), U::Percent, None),
            (Q::PulseRate, Some(70.0), U::PerMinute, None),
        ];
        if flags & 8 != 0 {
            want.push((Q::PulseAmplitudeIndex, Some(5.2), U::Percent, None));
        }
        let d = check(PLX_SPOT_CHECK, &f, &want, |_| false);
        let mut want_events = vec![];
        if flags & 2 != 0 {
            want_events.push("validated_data");
        }
        if flags & 4 != 0 {
            want_events.push("low_perfusion");
        }
        assert_eq!(events(&d), want_events);
        assert_eq!(
            attr(&d, "device_clock_set"),
            (flags & 16 != 0).then_some(&AttrValue::Int(0))
        );
        let want_time = (flags & 1 != 0).then_some(DT);
        assert!(d.values.iter().all(|v| v.device_time == want_time));
    }
}

#[test]
fn plx_continuous_every_flag_combination() {
    for flags in 0u8..32 {
        let mut f = vec![flags];
        f.extend_from_slice(&sf(97.0, 0));
        f.extend_from_slice(&sf(70.0, 0));
        let mut want: Expect = vec![
            (Q::Spo2, Some(97.0), U::Percent, None),
            (Q::PulseRate, Some(70.0), U::PerMinute, None),
        ];
        if flags & 1 != 0 {
            f.extend_from_slice(&sf(96.0, 0));
            f.extend_from_slice(&sf(71.0, 0));
            want.push((Q::Spo2, Some(96.0), U::Percent, Some("fast")));
            want.push((Q::PulseRate, Some(71.0), U::PerMinute, Some("fast")));
        }
        if flags & 2 != 0 {
            f.extend_from_slice(&sf(98.0, 0));
            f.extend_from_slice(&sf(69.0, 0));
            want.push((Q::Spo2, Some(98.0), U::Percent, Some("slow")));
            want.push((Q::PulseRate, Some(69.0), U::PerMinute, Some("slow")));
        }
        if flags & 4 != 0 {
            f.extend_from_slice(&(1u16 << 5).to_le_bytes()); // measurement ongoing
        }
        if flags & 8 != 0 {
            f.extend_from_slice(&[0x02, 0, 0]); // equipment malfunction
        }
        if flags & 16 != 0 {
            f.extend_from_slice(&sf(5.2, -1));
            want.push((Q::PulseAmplitudeIndex, Some(5.2), U::Percent, None));
        }
        let d = check(PLX_CONTINUOUS, &f, &want, |_| false);
        let mut want_events = vec![];
        if flags & 4 != 0 {
            want_events.push("measurement_ongoing");
        }
        if flags & 8 != 0 {
            want_events.push("equipment_malfunction");
        }
        assert_eq!(events(&d), want_events);
    }
}

#[test]
fn plx_invalid_or_unavailable_status_is_never_a_number() {
    for bit in [13u16, 15] {
        let mut f = vec![0x04];
        f.extend_from_slice(&sf(97.0, 0));
        f.extend_from_slice(&sf(70.0, 0));
        f.extend_from_slice(&(1u16 << bit).to_le_bytes());
        let d = gatt::decode(PLX_CONTINUOUS, &f).unwrap();
        assert!(
            d.values
                .iter()
                .all(|v| v.value == Value::Special(SpecialValue::Unavailable))
        );
        let mut f = vec![0x02];
        f.extend_from_slice(&sf(97.0, 0));
        f.extend_from_slice(&sf(70.0, 0));
        f.extend_from_slice(&(1u16 << bit).to_le_bytes());
        let d = gatt::decode(PLX_SPOT_CHECK, &f).unwrap();
        assert!(d.values.iter().all(|v| v.value.number().is_none()));
    }
}

#[test]
fn weight_every_flag_combination() {
    for flags in 0u8..16 {
        let imperial = flags & 1 != 0;
        let mut f = vec![flags];
        let (raw, w, wu) = if imperial {
            (15432u16, 154.32, U::Pound)
        } else {
            (14000u16, 70.0, U::Kilogram)
        };
        f.extend_from_slice(&raw.to_le_bytes());
        if flags & 2 != 0 {
            f.extend_from_slice(&TIME);
        }
        if flags & 4 != 0 {
            f.push(1);
        }
        let mut want: Expect = vec![(Q::BodyWeight, Some(w), wu, None)];
        if flags & 8 != 0 {
            f.extend_from_slice(&229u16.to_le_bytes());
            let (h, hv, hu) = if imperial {
                (689u16, 68.9, U::Inch)
            } else {
                (1750u16, 1.75, U::Metre)
            };
            f.extend_from_slice(&h.to_le_bytes());
            want.push((
                Q::BodyMassIndex,
                Some(22.9),
                U::KilogramPerSquareMetre,
                None,
            ));
            want.push((Q::BodyHeight, Some(hv), hu, None));
        }
        let d = check(WEIGHT_MEASUREMENT, &f, &want, |_| false);
        assert_eq!(
            attr(&d, "user_id"),
            (flags & 4 != 0).then_some(&AttrValue::Int(1))
        );
    }
    // 0xFFFF is "measurement unsuccessful", and user 0xFF is "unknown user".
    let d = gatt::decode(WEIGHT_MEASUREMENT, &[0x04, 0xFF, 0xFF, 0xFF]).unwrap();
    assert_eq!(
        d.values[0].value,
        Value::Special(SpecialValue::Unsuccessful)
    );
    assert_eq!(attr(&d, "user_id"), None);
}

#[test]
fn glucose_every_flag_combination() {
    for flags in 0u8..32 {
        let mut f = vec![flags];
        f.extend_from_slice(&7u16.to_le_bytes());
        f.extend_from_slice(&TIME);
        if flags & 1 != 0 {
            f.extend_from_slice(&30i16.to_le_bytes());
        }
        let mut want: Expect = vec![];
        if flags & 2 != 0 {
            if flags & 4 != 0 {
                // 5.6 mmol/L = 0.0056 mol/L = 56 × 10⁻⁴.
                f.extend_from_slice(&0xC038u16.to_le_bytes());
                want.push((Q::BloodGlucose, Some(5.6), U::MillimolePerLitre, None));
            } else {
                // 95 mg/dL = 0.00095 kg/L = 95 × 10⁻⁵.
                f.extend_from_slice(&0xB05Fu16.to_le_bytes());
                want.push((Q::BloodGlucose, Some(95.0), U::MilligramPerDecilitre, None));
            }
            f.push(0x11); // capillary whole blood, finger
        }
        if flags & 8 != 0 {
            f.extend_from_slice(&0x0001u16.to_le_bytes()); // battery low
        }
        let d = check(GLUCOSE_MEASUREMENT, &f, &want, |_| false);
        assert_eq!(attr(&d, "sequence"), Some(&AttrValue::Int(7)));
        if flags & 2 != 0 {
            let minute = if flags & 1 != 0 { 0 } else { 30 };
            let hour = if flags & 1 != 0 { 9 } else { 8 };
            let t = d.values[0].device_time.unwrap();
            assert_eq!((t.hour, t.minute), (hour, minute), "flags {flags:#04x}");
            assert_eq!(
                attr(&d, "sample_type"),
                Some(&AttrValue::Text("capillary_whole_blood"))
            );
            assert_eq!(
                attr(&d, "sample_location"),
                Some(&AttrValue::Text("finger"))
            );
        }
        assert_eq!(
            events(&d),
            if flags & 8 != 0 {
                vec!["device_battery_low"]
            } else {
                vec![]
            }
        );
    }
}

#[test]
fn battery_level_bounds() {
    check(
        BATTERY_LEVEL,
        &[0],
        &vec![(Q::BatteryLevel, Some(0.0), U::Percent, None)],
        |_| false,
    );
    check(
        BATTERY_LEVEL,
        &[100],
        &vec![(Q::BatteryLevel, Some(100.0), U::Percent, None)],
        |_| false,
    );
    assert!(gatt::decode(BATTERY_LEVEL, &[101]).is_err());
}

#[test]
fn special_values_pass_through_every_sfloat_field() {
    for (raw, status) in [
        (0x07FFu16, "nan"),
        (0x0800, "nres"),
        (0x07FE, "+inf"),
        (0x0802, "-inf"),
        (0x0801, "reserved"),
    ] {
        let r = raw.to_le_bytes();
        let bp = [0x00, r[0], r[1], r[0], r[1], r[0], r[1]];
        let d = gatt::decode(BLOOD_PRESSURE_MEASUREMENT, &bp).unwrap();
        assert!(
            d.values
                .iter()
                .all(|v| v.value.status() == status && v.value.number().is_none())
        );
        let plx = [0x00, r[0], r[1], r[0], r[1]];
        let d = gatt::decode(PLX_SPOT_CHECK, &plx).unwrap();
        assert!(d.values.iter().all(|v| v.value.status() == status));
    }
    let nan = 0x007F_FFFFu32.to_le_bytes();
    let d = gatt::decode(
        TEMPERATURE_MEASUREMENT,
        &[0, nan[0], nan[1], nan[2], nan[3]],
    )
    .unwrap();
    assert_eq!(d.values[0].value.status(), "nan");
}

#[test]
fn extra_bytes_after_the_announced_fields_are_ignored() {
    // GATT clients ignore octets a later version of a characteristic may append;
    // the announced fields keep their offsets, so the numbers are unchanged.
    let d = gatt::decode(HEART_RATE_MEASUREMENT, &[0x00, 72, 0xAA]).unwrap();
    assert_eq!(d.values[0].value, Value::Number(72.0));
    assert_eq!(d.values.len(), 1);
}
