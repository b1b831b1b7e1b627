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
//!
//! From schema v8 the device address is a code too (`device_codes`, given when a
//! device's first reading is stored), and the vocabulary carries the epochs that
//! reading ids are derived from (`ids.rs`), so that one value explains a row.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rusqlite::Connection;

use super::StoreError;
use super::ids::Epochs;
use crate::model::{DeviceAddress, Quantity, Reading, ReadingId, SpecialValue, Unit, Value};

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

/// Values by the store's own codes. SQLite gives codes from 1 upwards
/// (`INTEGER PRIMARY KEY`), so up to [`ByCode::DENSE`] a lookup is an index into
/// a list rather than a hash: reading a lease looks up four codes a row, and a
/// hash of a gateway's thousands of device codes sends each lookup to a random
/// cache line (measured: most of the row's decoding time with 65,536 devices).
#[derive(Debug)]
pub(super) struct ByCode<T> {
    dense: Vec<Option<T>>,
    /// Codes at or above `DENSE` or below 0 (not made by this store, but read
    /// from a file that may have been edited).
    sparse: Map<i64, T>,
}

impl<T> Default for ByCode<T> {
    fn default() -> Self {
        ByCode {
            dense: Vec::new(),
            sparse: Map::default(),
        }
    }
}

impl<T: Copy> ByCode<T> {
    /// Codes below this are kept in the list (at most 64 Ki entries).
    const DENSE: i64 = 1 << 16;

    pub(super) fn insert(&mut self, code: i64, value: T) {
        match usize::try_from(code) {
            Ok(i) if code < Self::DENSE => {
                if self.dense.len() <= i {
                    self.dense.resize(i + 1, None);
                }
                if let Some(slot) = self.dense.get_mut(i) {
                    *slot = Some(value);
                }
            }
            _ => {
                self.sparse.insert(code, value);
            }
        }
    }

    pub(super) fn get(&self, code: i64) -> Option<T> {
        match usize::try_from(code) {
            Ok(i) if code < Self::DENSE => self.dense.get(i).copied().flatten(),
            _ => self.sparse.get(&code).copied(),
        }
    }
}

/// Status code of a number (`"ok"`); fixed by the migration that made the table.
pub(super) const OK: i64 = 0;

/// The codes of one database, both ways, and its reading-id epochs (schema v8).
#[derive(Debug, Default)]
pub(super) struct Vocab {
    quantity: Map<Quantity, i64>,
    unit: Map<Unit, i64>,
    special: Map<SpecialValue, i64>,
    device: Map<DeviceAddress, i64>,
    quantity_of: ByCode<Quantity>,
    unit_of: ByCode<Unit>,
    special_of: ByCode<SpecialValue>,
    device_of: ByCode<DeviceAddress>,
    /// What the ids of readings stored without one are made from.
    pub(super) epochs: Epochs,
}

/// The codes of one reading: device, quantity, status, unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Codes {
    pub device: i64,
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
        let mut q = conn.prepare("SELECT code, address FROM device_codes")?;
        let rows = q.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        for row in rows {
            let (code, address) = row?;
            if let Ok(a) = <[u8; 6]>::try_from(address.as_slice()) {
                v.device.insert(DeviceAddress(a), code);
                v.device_of.insert(code, DeviceAddress(a));
            }
        }
        Ok(v)
    }

    /// Gives a code to each of `addresses` that has none yet, in a transaction of
    /// its own (once in a device's life, so its fsync does not matter), and learns
    /// them only once committed.
    pub(super) fn add_devices(
        &mut self,
        conn: &mut Connection,
        addresses: &[DeviceAddress],
    ) -> Result<(), StoreError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut added = Vec::with_capacity(addresses.len());
        {
            let mut insert =
                tx.prepare("INSERT OR IGNORE INTO device_codes (address) VALUES (?1)")?;
            let mut code = tx.prepare("SELECT code FROM device_codes WHERE address = ?1")?;
            for a in addresses {
                insert.execute([&a.0[..]])?;
                let c: i64 = code.query_row([&a.0[..]], |r| r.get(0))?;
                added.push((*a, c));
            }
        }
        tx.commit()?;
        for (a, c) in added {
            self.device.insert(a, c);
            self.device_of.insert(c, a);
        }
        Ok(())
    }

    /// Whether `address` has a code.
    pub(super) fn knows_device(&self, address: &DeviceAddress) -> bool {
        self.device.contains_key(address)
    }

    pub(super) fn device(&self, code: i64) -> Option<DeviceAddress> {
        self.device_of.get(code)
    }

    /// The id of the reading numbered `seq` that was stored without one.
    pub(super) fn reading_id(&self, seq: i64) -> Option<ReadingId> {
        self.epochs.id_of(seq)
    }

    /// The codes of `r`; `None` only if this build has a word missing from its own
    /// `ALL` lists (a bug that a test in `model` guards against), or its device was
    /// not given a code first ([`Vocab::add_devices`]).
    pub(super) fn codes(&self, r: &Reading) -> Option<Codes> {
        Some(Codes {
            device: *self.device.get(&r.device)?,
            quantity: *self.quantity.get(&r.quantity)?,
            status: match r.value {
                Value::Number(_) => OK,
                Value::Special(s) => *self.special.get(&s)?,
            },
            unit: *self.unit.get(&r.unit)?,
        })
    }

    pub(super) fn quantity(&self, code: i64) -> Option<Quantity> {
        self.quantity_of.get(code)
    }

    pub(super) fn unit(&self, code: i64) -> Option<Unit> {
        self.unit_of.get(code)
    }

    /// The value from its stored number and status code; `None` for a status this
    /// build has no word for, or an "ok" without a finite number.
    pub(super) fn value(&self, status: i64, number: Option<f64>) -> Option<Value> {
        match (status, number) {
            (OK, Some(n)) if n.is_finite() => Some(Value::Number(n)),
            (OK, _) => None,
            (code, _) => self.special_of.get(code).map(Value::Special),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_finds_its_value_whether_kept_in_the_list_or_the_map() {
        let mut t: ByCode<u8> = ByCode::default();
        let codes = [
            0,
            1,
            7,
            ByCode::<u8>::DENSE - 1,
            ByCode::<u8>::DENSE,
            i64::MAX,
            -1,
            i64::MIN,
        ];
        for (n, &c) in codes.iter().enumerate() {
            assert_eq!(t.get(c), None, "{c} before insert");
            t.insert(c, n as u8);
        }
        for (n, &c) in codes.iter().enumerate() {
            assert_eq!(t.get(c), Some(n as u8), "{c}");
        }
        // Codes between the ones given have no value.
        assert_eq!(t.get(2), None);
        assert_eq!(t.get(ByCode::<u8>::DENSE + 1), None);
        t.insert(7, 99);
        assert_eq!(t.get(7), Some(99));
        assert!(t.dense.len() <= ByCode::<u8>::DENSE as usize);
    }
}
