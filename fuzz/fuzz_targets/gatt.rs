//! Fuzz target `gatt`: arbitrary bytes through carehub::decode::fuzzing (see there
//! for how the bytes are read). A panic, including a non-finite decoded number, is
//! a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    carehub::decode::fuzzing::run_target("gatt", data);
});
