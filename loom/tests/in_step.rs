//! Keeps the copy in step with rcu.rs: the memory orderings of the real protocol, in source
//! order, are those the copy's `Variant::Real` uses. When rcu.rs changes one, this test fails:
//! update `src/lib.rs` (and its variants) to match, then the list below.

/// Every `Ordering::` in rcu.rs's code (comments left out), in order, and where it is;
/// `src/lib.rs` uses the same ones in `Variant::Real`.
const REAL: &[(&str, &str)] = &[
    (
        "fence(Ordering::SeqCst",
        "barrier_all: the fallback's full fence",
    ),
    ("self.slot.seq.load(Ordering::Relaxed", "enter: own counter"),
    ("Ordering::Release", "enter: the entry store"),
    (
        "compiler_fence(Ordering::SeqCst",
        "enter: light (membarrier) path",
    ),
    ("fence(Ordering::SeqCst", "enter: fallback path"),
    ("compiler_fence(Ordering::SeqCst", "exit"),
    ("self.slot.seq.load(Ordering::Relaxed", "exit: own counter"),
    ("Ordering::Release", "exit: the exit store"),
    (
        "slot.seq.load(Ordering::Acquire",
        "synchronize: first look at a slot",
    ),
    ("slot.seq.load(Ordering::Acquire", "synchronize: the wait"),
    ("self.ptr.load(Ordering::Acquire", "RcuCell::load"),
    ("Ordering::Release", "RcuCell::publish"),
];

/// The `Ordering::` uses in `source`'s code, each with the call it is an argument of (when the
/// call starts on the same line), in order.
fn orderings(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("Ordering::") {
            let name_end = rest[at + 10..]
                .find(|c: char| !c.is_ascii_alphanumeric())
                .map_or(rest.len(), |n| at + 10 + n);
            // The call this is an argument of: back to the previous space or opening of a
            // statement.
            let head = &rest[..at];
            let call_start = head.rfind([' ', '{', ',', '*']).map_or(0, |n| n + 1);
            let call = &head[call_start..];
            let call = if call.ends_with('(') { call } else { "" };
            found.push(format!("{call}{}", &rest[at..name_end]));
            rest = &rest[name_end..];
        }
    }
    found
}

#[test]
fn rcu_rs_orderings_are_the_copys() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/vdma/src/rcu.rs");
    let source = std::fs::read_to_string(path).expect("read crates/vdma/src/rcu.rs");
    let found = orderings(&source);
    let real: Vec<&str> = REAL.iter().map(|(ordering, _)| *ordering).collect();
    assert_eq!(
        found, real,
        "rcu.rs's memory orderings changed: update loom/src/lib.rs (the copy), then REAL"
    );
}

#[test]
fn the_extraction_sees_calls_and_skips_comments() {
    let sample = "x.store(1, Ordering::Release); // Ordering::SeqCst\n    fence(Ordering::SeqCst);";
    assert_eq!(
        orderings(sample),
        ["Ordering::Release", "fence(Ordering::SeqCst"]
    );
}
