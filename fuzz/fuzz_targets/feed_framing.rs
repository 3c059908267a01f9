#![no_main]
// Any bytes from an upstream feed, cut into two chunks anywhere: the same
// records as in one piece (for both framings), none over the limit.
use producer::pull::framing::{Cut, Events, Lines};

const LIMIT: usize = 64;

fn check(records: &[Cut]) {
    for cut in records {
        match cut {
            Cut::Record { data, .. } => assert!(data.len() <= LIMIT),
            Cut::Oversize { excerpt } => assert_eq!(excerpt.len(), LIMIT),
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let at = usize::from(split) % (data.len() + 1);
    let (whole_lines, whole_events) = {
        let (mut lines, mut events) = (Vec::new(), Vec::new());
        Lines::new(LIMIT).push(data, &mut lines);
        Events::new(LIMIT).push(data, &mut events);
        (lines, events)
    };
    let mut lines = Lines::new(LIMIT);
    let mut cut_lines = Vec::new();
    lines.push(&data[..at], &mut cut_lines);
    lines.push(&data[at..], &mut cut_lines);
    assert_eq!(cut_lines, whole_lines);
    let mut events = Events::new(LIMIT);
    let mut cut_events = Vec::new();
    events.push(&data[..at], &mut cut_events);
    events.push(&data[at..], &mut cut_events);
    assert_eq!(cut_events, whole_events);
    check(&whole_lines);
    check(&whole_events);
});
