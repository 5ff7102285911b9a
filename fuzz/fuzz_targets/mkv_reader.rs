//! Fuzzes the MKV push reader and the PutMedia session on top of it: any
//! input, in any chunking, must yield events or errors, never a panic; and
//! the chunked run must agree with the one-shot run.
#![no_main]

use kinema_archive::ingest::{IngestLimits, IngestSession, TimecodeType};
use kinema_mkv::Reader;
use libfuzzer_sys::fuzz_target;

fn events(chunks: &[&[u8]]) -> Vec<String> {
    let mut r = Reader::default();
    let mut out = Vec::new();
    let mut drain = |r: &mut Reader, out: &mut Vec<String>| {
        for _ in 0..100_000 {
            match r.poll_event() {
                Ok(Some(e)) => out.push(format!("{e:?}")),
                Ok(None) => return,
                Err(e) => out.push(format!("error {e}")),
            }
        }
        panic!("reader does not settle");
    };
    for c in chunks {
        r.push(c);
        drain(&mut r, &mut out);
    }
    r.finish();
    drain(&mut r, &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|b| *b as usize).unwrap_or(0).min(data.len());
    let (a, b) = data.split_at(split);
    assert_eq!(events(&[data]), events(&[a, b]));

    let mut s = IngestSession::new(TimecodeType::Relative, 0, IngestLimits::default());
    s.push(a, 0);
    s.push(b, 1);
    s.finish(2);
    while s.poll().is_some() {}
});
