//! Integer codes for the words of a reading (quantity, UCUM unit, status) in the
//! `readings` table (schema v4).
//!
//! A word repeated in every row costs its bytes twice on the SD card (WAL, then the
//! database); a code under 128 costs one byte, and status "ok" is code 0, which
//! SQLite stores in the row header alone. The words live in three lookup tables so
//! that the database explains itself (`readings_text` joins them back), and codes
//! are given by the database, not by this build: a newer build adds its words with
//! new codes, and an older build that meets a code it has no word for leaves that
//! row untouched rather than guess.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rusqlite::Connection;

use super::StoreError;
use crate::model::{Quantity, Reading, SpecialValue, Unit, Value};

/// Hashes a small key (an enum's discriminant, a code, a row id) with one
/// multiply per word; the keys are the store's own, never outside input.
#[derive(Default)]
pub(super) struct SmallKeyHasher(u64);

impl Hasher for SmallKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by small integers or enums of the store's own.
pub(super) type Map<K, V> = HashMap<K, V, BuildHasherDefault<SmallKeyHasher>>;

/// Status code of a number (`"ok"`); fixed by the migration that made the table.
pub(super) const OK: i64 = 0;

/// The codes of one database, both ways.
#[derive(Debug, Default)]
pub(super) struct Vocab {
    quantity: Map<Quantity, i64>,
    unit: Map<Unit, i64>,
    special: Map<SpecialValue, i64>,
    quantity_of: Map<i64, Quantity>,
    unit_of: Map<i64, Unit>,
    special_of: Map<i64, SpecialValue>,
}

/// The codes of one reading: quantity, status, unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Codes {
    pub quantity: i64,
    pub status: i64,
    pub unit: i64,
}

impl Vocab {
    /// Adds every word this build knows to the lookup tables (in one transaction)
    /// and loads all of them.
    pub(super) fn load(conn: &mut Connection) -> Result<Vocab, StoreError> {
        let tx = conn.transaction()?;
        {
            let mut q =
                tx.prepare("INSERT OR IGNORE INTO quantity_codes (quantity) VALUES (?1)")?;
            for w in Quantity::ALL {
                q.execute([w.as_str()])?;
            }
            let mut u = tx.prepare("INSERT OR IGNORE INTO unit_codes (unit) VALUES (?1)")?;
            for w in Unit::ALL {
                u.execute([w.ucum()])?;
            }
            let mut s = tx.prepare("INSERT OR IGNORE INTO status_codes (status) VALUES (?1)")?;
            for w in SpecialValue::ALL {
                s.execute([w.as_str()])?;
            }
        }
        tx.commit()?;
        Vocab::read(conn)
    }

    /// Loads the codes without adding any (for a read-only connection, opened
    /// after the writer has added this build's words).
    pub(super) fn read(conn: &Connection) -> Result<Vocab, StoreError> {
        let mut v = Vocab::default();
        let words = |sql: &str| -> Result<Vec<(i64, String)>, StoreError> {
            let mut q = conn.prepare(sql)?;
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        for (code, word) in words("SELECT code, quantity FROM quantity_codes")? {
            if let Some(q) = Quantity::parse(&word) {
                v.quantity.insert(q, code);
                v.quantity_of.insert(code, q);
            }
        }
        for (code, word) in words("SELECT code, unit FROM unit_codes")? {
            if let Some(u) = Unit::from_ucum(&word) {
                v.unit.insert(u, code);
                v.unit_of.insert(code, u);
            }
        }
        for (code, word) in words("SELECT code, status FROM status_codes")? {
            if let Some(s) = SpecialValue::parse(&word) {
                v.special.insert(s, code);
                v.special_of.insert(code, s);
            }
        }
        Ok(v)
    }

    /// The codes of `r`; `None` only if this build has a word missing from its own
    /// `ALL` lists (a bug that a test in `model` guards against).
    pub(super) fn codes(&self, r: &Reading) -> Option<Codes> {
        Some(Codes {
            quantity: *self.quantity.get(&r.quantity)?,
            status: match r.value {
                Value::Number(_) => OK,
                Value::Special(s) => *self.special.get(&s)?,
            },
            unit: *self.unit.get(&r.unit)?,
        })
    }

    pub(super) fn quantity(&self, code: i64) -> Option<Quantity> {
        self.quantity_of.get(&code).copied()
    }

    pub(super) fn unit(&self, code: i64) -> Option<Unit> {
        self.unit_of.get(&code).copied()
    }

    /// The value from its stored number and status code; `None` for a status this
    /// build has no word for, or an "ok" without a finite number.
    pub(super) fn value(&self, status: i64, number: Option<f64>) -> Option<Value> {
        match (status, number) {
            (OK, Some(n)) if n.is_finite() => Some(Value::Number(n)),
            (OK, _) => None,
            (code, _) => self.special_of.get(&code).copied().map(Value::Special),
        }
    }
}
