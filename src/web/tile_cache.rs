//! The residents overview's tiles, rendered once and shown to every client until
//! what they say would change.
//!
//! Under 50 staff screens the same 60 tiles were rendered for every request,
//! though they are the same for every user (a tile has links, no form, no CSRF
//! token) and change only when a resident's newest values change or when time
//! moves an age ("45 s ago") or a freshness mark (STALE, CHECK CLOCK) to its next
//! word. So a rendered tile is kept with everything it was rendered from — the
//! resident's row with its newest values, the SpO₂ scale, the clinical window —
//! and with the instant until which time cannot change a word of it
//! ([`unchanged_for`]). A request reuses a tile only if its inputs are equal
//! to the request's rows (from `overview_data`, which reads again after every
//! change of the store or the alert book) and that instant has not come. A cached
//! tile is therefore always byte for byte what rendering it now would give
//! (`tests::the_cached_tiles_are_always_what_rendering_now_gives`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clinical::news2::Spo2Scale;
use crate::clinical::{FUTURE_TOLERANCE, SensorScore};
use crate::model::Timestamp;
use crate::store::ResidentOverview;

/// Tiles kept, at most; more residents than this are rendered as before, past
/// the limit the cache forgets what has expired, then everything.
const MAX_TILES: usize = 2048;

/// Rendered tiles by resident id.
#[derive(Default)]
pub struct TileCache {
    tiles: Mutex<HashMap<i64, Cached>>,
}

struct Cached {
    resident: ResidentOverview,
    scale: Spo2Scale,
    stale_after: Duration,
    rendered_at: Timestamp,
    valid_until: Timestamp,
    html: Arc<str>,
}

impl Cached {
    fn serves(
        &self,
        r: &ResidentOverview,
        scale: Spo2Scale,
        now: Timestamp,
        stale_after: Duration,
    ) -> bool {
        // `rendered_at <= now`: a clock set back must not bring back old words.
        self.rendered_at <= now
            && now < self.valid_until
            && self.scale == scale
            && self.stale_after == stale_after
            && self.resident == *r
    }
}

/// One resident as the overview shows it: the row, the SpO₂ scale, the NEWS2
/// from the row at `now`.
pub type Scored<'a> = (&'a ResidentOverview, Spo2Scale, Option<SensorScore>);

impl TileCache {
    /// The tiles of `scored`, in its order, as one HTML string: each from the
    /// cache when it still says exactly what rendering it at `now` would, else
    /// rendered by `render` and kept.
    pub fn tiles(
        &self,
        scored: &[Scored<'_>],
        now: Timestamp,
        stale_after: Duration,
        render: impl Fn(&Scored<'_>) -> String,
    ) -> String {
        let hits: Vec<Option<Arc<str>>> = {
            let tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
            scored
                .iter()
                .map(|(r, scale, _)| {
                    tiles
                        .get(&r.id.0)
                        .filter(|c| c.serves(r, *scale, now, stale_after))
                        .map(|c| c.html.clone())
                })
                .collect()
        };
        let mut fresh = Vec::new();
        let mut out = String::with_capacity(scored.len() * 1200);
        for (s, hit) in scored.iter().zip(hits) {
            match hit {
                Some(html) => out.push_str(&html),
                None => {
                    let html: Arc<str> = render(s).into();
                    out.push_str(&html);
                    let (r, scale, _) = s;
                    let until = r
                        .latest
                        .iter()
                        .map(|v| unchanged_for(v.taken_at, now, stale_after))
                        .min()
                        .unwrap_or(Duration::MAX);
                    fresh.push(Cached {
                        resident: (*r).clone(),
                        scale: *scale,
                        stale_after,
                        rendered_at: now,
                        valid_until: now.saturating_add(until),
                        html,
                    });
                }
            }
        }
        if !fresh.is_empty() {
            let mut tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
            if tiles.len() + fresh.len() > MAX_TILES {
                tiles.retain(|_, c| c.valid_until > now);
                if tiles.len() + fresh.len() > MAX_TILES {
                    tiles.clear();
                }
            }
            for c in fresh {
                tiles.insert(c.resident.id.0, c);
            }
        }
        out
    }
}

/// How long from `now` everything the overview shows about a value taken at
/// `taken_at` stays as it is: its age in words (`describe_age`), whether it is
/// current, stale or dated in the future, and so the NEWS2 block, whose
/// staleness and "from readings N ago" come from the times of the values it
/// uses. Never longer than the truth; sometimes shorter (a value dated in the
/// future), which only costs rendering again. At least a millisecond.
pub fn unchanged_for(taken_at: Timestamp, now: Timestamp, stale_after: Duration) -> Duration {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let (t, n) = (taken_at.unix_ms(), now.unix_ms());
    let age = n.saturating_sub(t).max(0);
    let mut until = next_age_word(age).saturating_sub(age);
    // Future-dated while t > now + tolerance, i.e. until now = t - tolerance.
    let future_ends = t.saturating_sub(ms(FUTURE_TOLERANCE));
    if n < future_ends {
        until = until.min(future_ends - n);
    }
    // Stale once the age exceeds the window, i.e. from now = t + window + 1 ms.
    let stale_from = t.saturating_add(ms(stale_after)).saturating_add(1);
    if n < stale_from {
        until = until.min(stale_from - n);
    }
    Duration::from_millis(u64::try_from(until.max(1)).unwrap_or(u64::MAX))
}

/// The first age in milliseconds, after `age_ms`, at which `describe_age` says
/// something else. Follows `describe_age` bucket for bucket (a test compares
/// them over three days of ages).
fn next_age_word(age_ms: i64) -> i64 {
    let s = age_ms / 1000;
    let next_s = match s {
        i64::MIN..=4 => 5,
        5..=59 => s + 1,
        60..=5399 => ((s / 60 + 1) * 60).min(5400),
        5400..=172_799 => (((s + 1800) / 3600 + 1) * 3600 - 1800).min(172_800),
        _ => (s / 86_400 + 1).saturating_mul(86_400),
    };
    next_s.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceAddress, Quantity, ResidentId, Unit, Value};
    use crate::store::LatestValue;
    use crate::web::describe_age;

    #[test]
    fn next_age_word_is_where_describe_age_changes_its_words() {
        let words = |ms: i64| describe_age(Duration::from_millis(u64::try_from(ms).unwrap()));
        // Every second over three days, and the milliseconds around each boundary.
        let mut age = 0;
        while age < 3 * 86_400_000 {
            let next = next_age_word(age);
            assert!(next > age, "at {age} ms");
            assert_eq!(words(age), words(next - 1), "{age} ms to {} ms", next - 1);
            assert_ne!(words(age), words(next), "at the boundary {next} ms");
            age += 1000;
        }
        assert_eq!(next_age_word(4_999), 5_000);
        assert_eq!(next_age_word(59_999), 60_000);
        assert_eq!(next_age_word(60_000), 120_000);
        assert_eq!(next_age_word(5_399_000), 5_400_000);
    }

    #[test]
    fn unchanged_for_stops_at_the_stale_and_future_boundaries() {
        let window = Duration::from_secs(3600);
        let t = Timestamp::from_unix_ms(1_000_000_000);
        let check = |now_ms: i64, expected_ms: u64| {
            assert_eq!(
                unchanged_for(t, Timestamp::from_unix_ms(now_ms), window),
                Duration::from_millis(expected_ms),
                "now {now_ms}"
            );
        };
        // "just now" until 5 s.
        check(1_000_000_000, 5_000);
        // "59 min ago" (age 59 min 30 s): the next word is at 60 min, then stale 1 ms later.
        check(1_000_000_000 + 3_570_000, 30_000);
        check(1_000_000_000 + 3_600_000, 1);
        // Dated 10 min ahead: "check clock" until 2 min ahead.
        check(1_000_000_000 - 600_000, 5_000);
        check(1_000_000_000 - 121_000, 1_000);
    }

    fn row(id: i64, taken: &[(Quantity, f64, i64)]) -> ResidentOverview {
        ResidentOverview {
            id: ResidentId(id),
            display_name: format!("Resident {id}"),
            room: format!("Room {id}"),
            latest: taken
                .iter()
                .map(|(q, v, at)| LatestValue {
                    quantity: *q,
                    value: Value::Number(*v),
                    unit: match q {
                        Quantity::Spo2 => Unit::Percent,
                        Quantity::BodyTemperature => Unit::Celsius,
                        _ => Unit::PerMinute,
                    },
                    taken_at: Timestamp::from_unix_ms(*at),
                    device: "C0:00:00:00:00:01".parse::<DeviceAddress>().unwrap(),
                    device_time: None,
                    reading_id: None,
                })
                .collect(),
        }
    }

    /// The overview's own rendering of a tile.
    fn render(window: Duration, now: Timestamp) -> impl Fn(&Scored<'_>) -> String {
        move |(r, scale, score)| {
            super::super::pages::tile(r, *scale, score.as_ref(), now, window).into_string()
        }
    }

    fn scored(rows: &[ResidentOverview], now: Timestamp, window: Duration) -> Vec<Scored<'_>> {
        rows.iter()
            .map(|r| {
                let s = super::super::pages::sensor_news2(r, Spo2Scale::One, now, window);
                (r, Spo2Scale::One, s)
            })
            .collect()
    }

    /// The cache's tiles at `now`, checked against rendering them now.
    fn check(
        cache: &TileCache,
        rows: &[ResidentOverview],
        now: Timestamp,
        window: Duration,
    ) -> String {
        let s = scored(rows, now, window);
        let direct: String = s.iter().map(render(window, now)).collect();
        let cached = cache.tiles(&s, now, window, render(window, now));
        assert_eq!(cached, direct, "at {now:?}");
        cached
    }

    #[test]
    fn the_cached_tiles_are_always_what_rendering_now_gives() {
        let window = Duration::from_secs(600);
        let t0 = 1_700_000_000_000;
        let rows = vec![
            row(
                1,
                &[
                    (Quantity::Spo2, 96.0, t0),
                    (Quantity::PulseRate, 70.0, t0 - 3_333),
                ],
            ),
            // Taken 9 min 50 s before t0: STALE from 10 s in.
            row(
                2,
                &[
                    (Quantity::BodyTemperature, 37.2, t0 - 590_000),
                    (Quantity::Spo2, 91.0, t0 - 590_000),
                ],
            ),
            // Dated 2 min 5 s ahead: CHECK CLOCK for the first 5 s.
            row(3, &[(Quantity::PulseRate, 88.0, t0 + 125_000)]),
            row(4, &[]),
        ];
        let cache = TileCache::default();
        let (mut reused, mut all) = (0, 0);
        // Every 97 ms for 11 minutes: through "just now", seconds, minutes, STALE.
        let mut now_ms = t0;
        while now_ms < t0 + 660_000 {
            let rendered = |c: &TileCache| -> Vec<Timestamp> {
                c.tiles
                    .lock()
                    .unwrap()
                    .values()
                    .map(|c| c.rendered_at)
                    .collect()
            };
            let before = rendered(&cache);
            let page = check(&cache, &rows, Timestamp::from_unix_ms(now_ms), window);
            let after = rendered(&cache);
            reused += after.iter().filter(|a| before.contains(a)).count();
            all += rows.len();
            let stale_rows = page.matches("<tr class=\"stale\">").count();
            if now_ms == t0 {
                // Only resident 3's pulse, dated ahead.
                assert!(page.contains("CHECK CLOCK") && stale_rows == 1, "{page}");
            }
            if now_ms > t0 + 10_000 && now_ms < t0 + 590_000 {
                // Resident 2's two values.
                assert!(!page.contains("CHECK CLOCK") && stale_rows == 2, "{page}");
            }
            now_ms += 97;
        }
        // The cache did its job too: most tiles were not rendered again.
        assert!(reused > all / 2, "the cache served {reused} of {all} tiles");
    }

    #[test]
    fn a_changed_input_is_never_served_from_the_cache() {
        let window = Duration::from_secs(3600);
        let now = Timestamp::from_unix_ms(1_700_000_000_000);
        let cache = TileCache::default();
        let before = [row(7, &[(Quantity::Spo2, 96.0, now.unix_ms() - 1_000)])];
        assert!(check(&cache, &before, now, window).contains("96%"));
        // A new reading within the same second: the same age words, a new value.
        let after = [row(7, &[(Quantity::Spo2, 89.0, now.unix_ms() - 500)])];
        let page = check(&cache, &after, now, window);
        assert!(page.contains("89%") && !page.contains("96%"), "{page}");
        // A scale-2 resident, and another window, are other inputs too.
        let two: Vec<Scored<'_>> = scored(&after, now, window)
            .into_iter()
            .map(|(r, _, s)| (r, Spo2Scale::Two, s))
            .collect();
        assert!(
            cache
                .tiles(&two, now, window, render(window, now))
                .contains("SpO2 scale 2")
        );
        let short = Duration::from_millis(100);
        assert!(check(&cache, &after, now, short).contains("STALE"));
        // A clock set back does not bring back words rendered later.
        check(
            &cache,
            &after,
            Timestamp::from_unix_ms(now.unix_ms() - 10_000),
            window,
        );
        check(
            &cache,
            &after,
            Timestamp::from_unix_ms(now.unix_ms() - 300_000),
            window,
        );
    }
}
