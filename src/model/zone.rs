//! The care home's civil time: the site's zone (`site.timezone`), through which
//! device clocks (local time, no zone) become instants and instants become the
//! wall-clock times staff read.

use super::Timestamp;

/// The care home's civil time zone (`site.timezone`, default `Europe/London`).
///
/// Health devices keep their own clock in local civil time with no zone: a blood
/// pressure cuff set by a carer in July reads one hour ahead of UTC. Reading that
/// as UTC would file every summer measurement an hour late, so device times are
/// turned into instants through the site's zone, with its daylight-saving rules
/// (from the system's zoneinfo, or the copy built into the binary when the image
/// has none).
#[derive(Debug, Clone)]
pub struct SiteZone {
    name: String,
    zone: jiff::tz::TimeZone,
}

impl SiteZone {
    /// The IANA zone `name` (e.g. `Europe/London`), or why it is not one.
    pub fn named(name: &str) -> Result<Self, String> {
        match jiff::tz::TimeZone::get(name) {
            Ok(zone) => Ok(SiteZone {
                name: name.to_owned(),
                zone,
            }),
            Err(e) => Err(format!(
                "{name:?} is not a time zone this gateway knows ({e}); use an IANA name such as \"Europe/London\""
            )),
        }
    }

    /// UTC, for tests and for devices whose clocks the gateway has set to UTC.
    pub fn utc() -> Self {
        SiteZone {
            name: "UTC".to_owned(),
            zone: jiff::tz::TimeZone::UTC,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instant at which the site's clocks showed this civil time, or `None`
    /// for an invalid date. When the clocks go back the hour 01:00–02:00 happens
    /// twice, and when they go forward it never happens; in both cases the
    /// candidate instant nearest to `near` (when the gateway received the value)
    /// is taken: a device reports soon after it measures.
    pub fn civil_to_instant(&self, civil: CivilTime, near: Timestamp) -> Option<Timestamp> {
        let dt = jiff::civil::DateTime::new(
            i16::try_from(civil.year).ok()?,
            i8::try_from(civil.month).ok()?,
            i8::try_from(civil.day).ok()?,
            i8::try_from(civil.hour).ok()?,
            i8::try_from(civil.minute).ok()?,
            i8::try_from(civil.second).ok()?,
            0,
        )
        .ok()?;
        let ambiguous = self.zone.to_ambiguous_timestamp(dt);
        let earlier = ambiguous.earlier().ok()?.as_millisecond();
        let later = ambiguous.later().ok()?.as_millisecond();
        let near = near.unix_ms();
        let pick = if (earlier - near).abs() <= (later - near).abs() {
            earlier
        } else {
            later
        };
        Some(Timestamp::from_unix_ms(pick))
    }

    /// The site's wall-clock time of `at`, as staff read it: `14:32`.
    pub fn clock(&self, at: Timestamp) -> String {
        match self.instant_to_civil(at) {
            Some(c) => format!("{:02}:{:02}", c.hour, c.minute),
            None => at.to_rfc3339(),
        }
    }

    /// The site's wall-clock time of `at` with seconds: `14:32:05`.
    pub fn clock_seconds(&self, at: Timestamp) -> String {
        match self.instant_to_civil(at) {
            Some(c) => format!("{:02}:{:02}:{:02}", c.hour, c.minute, c.second),
            None => at.to_rfc3339(),
        }
    }

    /// The site's date and wall-clock time of `at`: `2026-12-01 14:32`.
    pub fn date_time(&self, at: Timestamp) -> String {
        match self.instant_to_civil(at) {
            Some(c) => format!(
                "{:04}-{:02}-{:02} {:02}:{:02}",
                c.year, c.month, c.day, c.hour, c.minute
            ),
            None => at.to_rfc3339(),
        }
    }

    /// The zone's abbreviation at `at` (`GMT`, `BST`), for a page's footer.
    pub fn abbreviation(&self, at: Timestamp) -> String {
        match jiff::Timestamp::from_millisecond(at.unix_ms()) {
            Ok(ts) => self.zone.to_offset_info(ts).abbreviation().to_owned(),
            Err(_) => self.name.clone(),
        }
    }

    /// What the site's clocks showed at `at` (for the simulator's devices, which
    /// keep local time like real ones).
    pub fn instant_to_civil(&self, at: Timestamp) -> Option<CivilTime> {
        let ts = jiff::Timestamp::from_millisecond(at.unix_ms()).ok()?;
        let dt = self.zone.to_datetime(ts);
        Some(CivilTime {
            year: u16::try_from(dt.year()).ok()?,
            month: u8::try_from(dt.month()).ok()?,
            day: u8::try_from(dt.day()).ok()?,
            hour: u8::try_from(dt.hour()).ok()?,
            minute: u8::try_from(dt.minute()).ok()?,
            second: u8::try_from(dt.second()).ok()?,
        })
    }
}

/// Two zones are the same when they have the same name.
impl PartialEq for SiteZone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// A wall-clock date and time with no zone, as a device's clock shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn civil(y: u16, mo: u8, d: u8, h: u8, mi: u8) -> CivilTime {
        CivilTime {
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: 0,
        }
    }

    fn at(s: &str) -> Timestamp {
        let t = jiff::Timestamp::from_str(s).unwrap();
        Timestamp::from_unix_ms(t.as_millisecond())
    }

    #[test]
    fn london_device_time_is_british_summer_time_in_summer_and_gmt_in_winter() {
        let london = SiteZone::named("Europe/London").unwrap();
        let summer = london.civil_to_instant(civil(2026, 7, 1, 12, 0), at("2026-07-01T11:00:30Z"));
        assert_eq!(summer.unwrap().to_rfc3339(), "2026-07-01T11:00:00.000Z");
        let winter =
            london.civil_to_instant(civil(2026, 11, 23, 12, 0), at("2026-11-23T12:00:30Z"));
        assert_eq!(winter.unwrap().to_rfc3339(), "2026-11-23T12:00:00.000Z");
    }

    #[test]
    fn the_repeated_hour_when_clocks_go_back_is_resolved_by_arrival_time() {
        // 25 October 2026: 01:00-02:00 London time happens first in BST, then in GMT.
        let london = SiteZone::named("Europe/London").unwrap();
        let t = civil(2026, 10, 25, 1, 30);
        let first = london.civil_to_instant(t, at("2026-10-25T00:31:00Z"));
        assert_eq!(first.unwrap().to_rfc3339(), "2026-10-25T00:30:00.000Z");
        let second = london.civil_to_instant(t, at("2026-10-25T01:31:00Z"));
        assert_eq!(second.unwrap().to_rfc3339(), "2026-10-25T01:30:00.000Z");
    }

    #[test]
    fn the_skipped_hour_when_clocks_go_forward_still_gives_an_instant_near_arrival() {
        // 29 March 2026: London goes from 01:00 GMT straight to 02:00 BST, so a device
        // whose clock was not changed shows 01:30 at 01:30Z.
        let london = SiteZone::named("Europe/London").unwrap();
        let t = london.civil_to_instant(civil(2026, 3, 29, 1, 30), at("2026-03-29T01:30:10Z"));
        assert_eq!(t.unwrap().to_rfc3339(), "2026-03-29T01:30:00.000Z");
    }

    #[test]
    fn civil_time_round_trips_through_the_zone() {
        let london = SiteZone::named("Europe/London").unwrap();
        let now = at("2026-08-14T16:20:05Z");
        let c = london.instant_to_civil(now).unwrap();
        assert_eq!((c.hour, c.minute, c.second), (17, 20, 5));
        assert_eq!(london.civil_to_instant(c, now), Some(now));
    }

    #[test]
    fn staff_read_the_site_wall_clock_in_summer_and_winter() {
        let london = SiteZone::named("Europe/London").unwrap();
        // 2026-07-01T12:00:00Z is 13:00 BST; 2026-12-01T20:17:35Z is 20:17 GMT.
        let summer = Timestamp::from_unix_ms(1_782_907_200_000);
        assert_eq!(london.clock(summer), "13:00");
        assert_eq!(london.date_time(summer), "2026-07-01 13:00");
        assert_eq!(london.abbreviation(summer), "BST");
        let winter = Timestamp::from_unix_ms(1_796_156_255_000);
        assert_eq!(london.clock_seconds(winter), "20:17:35");
        assert_eq!(london.abbreviation(winter), "GMT");
    }

    #[test]
    fn unknown_zone_and_invalid_dates_are_refused() {
        let e = SiteZone::named("Europe/Londn").unwrap_err();
        assert!(e.contains("Europe/Londn") && e.contains("IANA"), "{e}");
        let utc = SiteZone::utc();
        let near = at("2026-02-28T00:00:00Z");
        assert_eq!(utc.civil_to_instant(civil(2026, 2, 30, 0, 0), near), None);
        assert_eq!(utc.civil_to_instant(civil(2026, 13, 1, 0, 0), near), None);
    }
}
