//! `carehub news2`: scores one set of observations and prints the result as JSON.
//!
//! Contract (other tools rely on it): prints `{"total", "band", "components",
//! "partial", "missing"}`; `components` holds only the parameters given. Without
//! `--oxygen` the resident is taken to be on air. An impossible or unreadable value
//! exits 1 with a one-line reason on stderr and nothing on stdout.

use serde::Serialize;

use crate::clinical::news2::{Consciousness, Observations, Parameter, Spo2Scale, score};

#[derive(Debug, clap::Args)]
pub struct News2Args {
    /// Respiration rate, breaths per minute.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub resp_rate: Option<String>,
    /// SpO2, percent.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub spo2: Option<String>,
    /// SpO2 scale: 1, or 2 for confirmed hypercapnic respiratory failure (a clinician's choice).
    #[arg(long, value_name = "1|2", default_value = "1")]
    pub spo2_scale: String,
    /// On supplemental oxygen (otherwise on air).
    #[arg(long)]
    pub oxygen: bool,
    /// Systolic blood pressure, mmHg.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub systolic: Option<String>,
    /// Pulse, beats per minute.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub pulse: Option<String>,
    /// Consciousness on the ACVPU scale.
    #[arg(long, value_name = "A|C|V|P|U")]
    pub consciousness: Option<String>,
    /// Temperature, degrees Celsius.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub temperature: Option<String>,
}

#[derive(Serialize)]
struct Output {
    total: u8,
    band: &'static str,
    components: Components,
    partial: bool,
    missing: Vec<&'static str>,
}

#[derive(Serialize, Default)]
struct Components {
    #[serde(skip_serializing_if = "Option::is_none")]
    resp_rate: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spo2: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oxygen: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    systolic: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pulse: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consciousness: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<u8>,
}

fn number(name: &str, v: &Option<String>) -> Result<Option<f64>, String> {
    match v {
        None => Ok(None),
        Some(s) => match s.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(format!("--{name} {s:?} is not a number")),
        },
    }
}

/// The JSON line to print, or the reason to print on stderr.
pub fn run(args: &News2Args) -> Result<String, String> {
    let spo2_scale = match args.spo2_scale.trim() {
        "1" => Spo2Scale::One,
        "2" => Spo2Scale::Two,
        other => return Err(format!("--spo2-scale {other:?} must be 1 or 2")),
    };
    let consciousness = match &args.consciousness {
        None => None,
        Some(c) => Some(
            Consciousness::parse(c.trim())
                .ok_or_else(|| format!("--consciousness {c:?} must be one of A, C, V, P, U"))?,
        ),
    };
    let obs = Observations {
        resp_rate: number("resp-rate", &args.resp_rate)?,
        spo2: number("spo2", &args.spo2)?,
        spo2_scale,
        on_oxygen: Some(args.oxygen),
        systolic: number("systolic", &args.systolic)?,
        pulse: number("pulse", &args.pulse)?,
        consciousness,
        temperature: number("temperature", &args.temperature)?,
    };
    let s = score(&obs).map_err(|e| e.to_string())?;
    let mut c = Components::default();
    for (p, v) in &s.components {
        let slot = match p {
            Parameter::RespRate => &mut c.resp_rate,
            Parameter::Spo2 => &mut c.spo2,
            Parameter::Oxygen => &mut c.oxygen,
            Parameter::Systolic => &mut c.systolic,
            Parameter::Pulse => &mut c.pulse,
            Parameter::Consciousness => &mut c.consciousness,
            Parameter::Temperature => &mut c.temperature,
        };
        *slot = Some(*v);
    }
    let out = Output {
        total: s.total,
        band: s.band.as_str(),
        components: c,
        partial: s.partial(),
        missing: s.missing.iter().map(|p| p.as_str()).collect(),
    };
    serde_json::to_string(&out).map_err(|e| format!("internal: cannot write JSON: {e}"))
}
