//! One reading as it leaves the gateway, shared by the JSON payload and the FHIR
//! bundle (its own module so that neither imports the other for it).

use crate::model::Reading;

/// One reading as it leaves the gateway: the reading and the pseudonymous reference
/// of the resident it belongs to (never a name).
#[derive(Debug, Clone, Copy)]
pub struct OutgoingReading<'a> {
    pub reading: &'a Reading,
    /// The configured pseudonymous reference; `None` for room data and for devices
    /// not assigned to anybody.
    pub resident_reference: Option<&'a str>,
}
