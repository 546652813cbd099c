//! Tests of the period syntax: the examples of `Time::Period`'s own
//! documentation, the calendar arithmetic, errors, and a cross-check of
//! thousands of random periods and moments against the real Perl module
//! (Debian's `libtime-period-perl`, installed by `scripts/prereqs.sh`).

use super::*;

/// 2026-11-30 is a Monday.
fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> TimeParts {
    TimeParts {
        year: y,
        month: mo,
        mday: d,
        hour: h,
        minute: mi,
        second: s,
    }
}

fn yes(p: &str, t: TimeParts) -> bool {
    Period::parse(p)
        .unwrap_or_else(|e| panic!("{p:?}: {e}"))
        .contains(&t)
}

#[test]
fn calendar_parts() {
    // Known weekdays.
    assert_eq!(at(1970, 1, 1, 0, 0, 0).weekday(), 4);
    assert_eq!(at(2026, 11, 30, 0, 0, 0).weekday(), 1);
    assert_eq!(at(2000, 2, 29, 0, 0, 0).weekday(), 2);
    assert_eq!(at(2026, 1, 1, 0, 0, 0).yearday(), 0);
    assert_eq!(at(2024, 12, 31, 0, 0, 0).yearday(), 365);
    // November 2026 starts on a Sunday: the 1st is week 0, the 8th week 1;
    // March 2026 starts on a Sunday too; May 2026 on a Friday: the 3rd
    // (Sunday) starts week 1, the 31st (Sunday) week 5.
    assert_eq!(at(2026, 11, 1, 0, 0, 0).week(), 0);
    assert_eq!(at(2026, 11, 7, 0, 0, 0).week(), 0);
    assert_eq!(at(2026, 11, 8, 0, 0, 0).week(), 1);
    assert_eq!(at(2026, 5, 2, 0, 0, 0).week(), 0);
    assert_eq!(at(2026, 5, 3, 0, 0, 0).week(), 1);
    assert_eq!(at(2026, 5, 31, 0, 0, 0).week(), 5);
    // Unix time round trip.
    let t = TimeParts::from_unix(1_795_987_799, 0);
    assert_eq!(t, at(2026, 11, 29, 21, 29, 59));
    assert_eq!(TimeParts::from_unix(-1, 0), at(1969, 12, 31, 23, 59, 59));
    assert_eq!(TimeParts::from_unix(0, 3600), at(1970, 1, 1, 1, 0, 0));
}

#[test]
fn documentation_examples() {
    let mon_9 = at(2026, 11, 30, 9, 0, 0);
    let mon_1659 = at(2026, 11, 30, 16, 59, 59);
    let mon_17 = at(2026, 11, 30, 17, 0, 0);
    let sat_10 = at(2026, 11, 28, 10, 0, 0);
    let tue_1430 = at(2026, 12, 1, 14, 30, 0);
    let tue_15 = at(2026, 12, 1, 15, 0, 0);
    // (period, moment, expected)
    let table: Vec<(&str, TimeParts, bool)> = vec![
        ("wd {Mon-Fri} hr {9am-4pm}", mon_9, true),
        ("wd {Mon-Fri} hr {9am-4pm}", mon_1659, true),
        ("wd {Mon-Fri} hr {9am-4pm}", mon_17, false),
        ("wd {Mon-Fri} hr {9am-4pm}", sat_10, false),
        (
            "wd {Mon Wed Fri} hr {9am-4pm}, wd{Tue Thu} hr {9am-2pm}",
            tue_1430,
            true,
        ),
        (
            "wd {Mon Wed Fri} hr {9am-4pm}, wd{Tue Thu} hr {9am-2pm}",
            tue_15,
            false,
        ),
        (
            "wd {Mon Wed Fri} hr {9am-4pm}, wd{Tue Thu} hr {9am-2pm}",
            mon_1659,
            true,
        ),
        // Weeks 1, 3, 5 of the month: 2026-11-30 is in week 5 (index 4 -> "5").
        ("wk {1 3 5} wd {Mon Wed Fri} hr {9am-4pm}", mon_9, true),
        ("wk {2 4} wd {Mon Wed Fri} hr {9am-4pm}", mon_9, false),
        // Winter, five ways.
        ("mo {Nov-Feb}", at(2026, 1, 15, 0, 0, 0), true),
        ("mo {Nov-Feb}", at(2026, 3, 1, 0, 0, 0), false),
        ("mo {Jan-Feb Nov-Dec}", at(2026, 12, 24, 0, 0, 0), true),
        ("mo {jan feb nov dec}", at(2026, 6, 1, 0, 0, 0), false),
        ("mo {Jan Feb}, mo {Nov Dec}", at(2026, 11, 2, 0, 0, 0), true),
        ("mo {Jan Feb} mo {Nov Dec}", at(2026, 2, 28, 0, 0, 0), true),
        (
            "mo {Jan Feb} mo {Nov Dec}",
            at(2026, 10, 31, 0, 0, 0),
            false,
        ),
        ("minute { 0-29 }", at(2026, 1, 1, 5, 29, 59), true),
        ("minute { 0-29 }", at(2026, 1, 1, 5, 30, 0), false),
        ("hour { 12am-11am }", at(2026, 1, 1, 0, 0, 0), true),
        ("hour { 12am-11am }", at(2026, 1, 1, 11, 59, 59), true),
        ("hour { 12am-11am }", at(2026, 1, 1, 12, 0, 0), false),
        (
            "sec {0-4 10-14 20-24 30-34 40-44 50-54}",
            at(2026, 1, 1, 0, 0, 14),
            true,
        ),
        (
            "sec {0-4 10-14 20-24 30-34 40-44 50-54}",
            at(2026, 1, 1, 0, 0, 15),
            false,
        ),
        // Sunday is wd 1 and Saturday 7 in numbers.
        (
            "wd {1 3 5 7} min {0-29}, wd {2 4 6} min {30-59}",
            at(2026, 11, 29, 3, 10, 0),
            true,
        ),
        (
            "wd {1 3 5 7} min {0-29}, wd {2 4 6} min {30-59}",
            at(2026, 11, 30, 3, 10, 0),
            false,
        ),
        (
            "wd {1 3 5 7} min {0-29}, wd {2 4 6} min {30-59}",
            at(2026, 11, 30, 3, 40, 0),
            true,
        ),
        // Wrapping ranges, mon's seed watch list, blank and none.
        ("min {20-10}", at(2026, 1, 1, 0, 15, 0), false),
        ("min {20-10}", at(2026, 1, 1, 0, 5, 0), true),
        ("wd {Sun-Sat}", sat_10, true),
        ("hr {10pm-2am}", at(2026, 1, 1, 1, 0, 0), true),
        ("hr {12noon}", at(2026, 1, 1, 12, 30, 0), true),
        ("  ", sat_10, true),
        ("NONE", sat_10, false),
        // Years: two digits are this century; years do not wrap.
        ("yr {26}", at(2026, 1, 1, 0, 0, 0), true),
        ("yr {99-1972}", at(2026, 1, 1, 0, 0, 0), true),
        ("year {2027-2030}", at(2026, 1, 1, 0, 0, 0), false),
        ("yd {1}", at(2026, 1, 1, 0, 0, 0), true),
        ("md {31-1}", at(2026, 1, 31, 0, 0, 0), true),
        ("md {31-1}", at(2026, 1, 2, 0, 0, 0), false),
        // Long scale names, odd spacing, upper case, full names.
        ("WDAY{monday - friday}HOUR{9am - 4pm}", mon_9, true),
        ("month {January-February}", at(2026, 2, 1, 0, 0, 0), true),
    ];
    for (p, t, want) in table {
        assert_eq!(yes(p, t), want, "{p:?} at {t:?}");
    }
}

#[test]
fn malformed_periods_are_errors() {
    for (p, needle) in [
        ("wd {Mon-Fri", "missing '}'"),
        ("wd Mon-Fri", "expected `scale {ranges}`"),
        ("weekday {Mon}", "unknown scale \"weekday\""),
        ("w {1}", "unknown scale"),
        ("hr {25}", "not a valid hour"),
        ("hr {13pm}", "not a valid hour"),
        ("hr {11noon}", "not a valid hour"),
        ("mo {13}", "not a valid month"),
        ("mo {foo}", "not a valid month"),
        ("wd {0}", "not a valid weekday"),
        ("wk {7}", "not a valid week"),
        ("yr {1969}", "not a valid year"),
        ("min {60}", "not a valid minute"),
        ("sec {-1}", "not a valid second"),
        ("md {}", "no range"),
        ("wd {Mon},", "empty sub-period"),
        ("wd {Mon {Tue}}", "'{' inside"),
    ] {
        let e = Period::parse(p).expect_err(p);
        assert!(e.0.contains(needle), "{p:?}: {e}");
    }
}

/// A small deterministic generator (no extra dependency for one test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn random_period(r: &mut Lcg) -> String {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["su", "mon", "tue", "wed", "thu", "fri", "sat"];
    let mut subs = Vec::new();
    for _ in 0..=r.next(2) {
        let mut scales = Vec::new();
        for _ in 0..=r.next(3) {
            let (name, lo, hi) = match r.next(9) {
                0 => ("yr", 2024, 2028),
                1 => ("mo", 1, 12),
                2 => ("wk", 1, 6),
                3 => ("yd", 1, 366),
                4 => ("md", 1, 31),
                5 => ("wd", 1, 7),
                6 => ("hr", 0, 23),
                7 => ("min", 0, 59),
                _ => ("sec", 0, 59),
            };
            let v = |r: &mut Lcg| -> String {
                let n = lo + r.next((hi - lo + 1) as u64) as i64;
                match (name, r.next(3)) {
                    ("mo", 0) => MONTHS[(n - 1) as usize].to_string(),
                    ("wd", 0) => DAYS[(n - 1) as usize].to_string(),
                    ("hr", 0) if n == 0 => "12am".into(),
                    ("hr", 0) if n < 12 => format!("{n}am"),
                    ("hr", 0) if n == 12 => "12pm".into(),
                    ("hr", 0) => format!("{}pm", n - 12),
                    _ => n.to_string(),
                }
            };
            let mut ranges = Vec::new();
            for _ in 0..=r.next(2) {
                if r.next(2) == 0 {
                    ranges.push(v(r));
                } else {
                    ranges.push(format!("{}-{}", v(r), v(r)));
                }
            }
            scales.push(format!("{name} {{{}}}", ranges.join(" ")));
        }
        subs.push(scales.join(" "));
    }
    subs.join(", ")
}

#[test]
fn agrees_with_perls_time_period() {
    let have = std::process::Command::new("perl")
        .args(["-MTime::Period", "-e", "1"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "Perl's Time::Period is needed for this cross-check: apt-get install libtime-period-perl (scripts/prereqs.sh does)"
    );
    let mut r = Lcg(0x5eed);
    let mut cases = Vec::new();
    for _ in 0..3000 {
        let p = random_period(&mut r);
        // 2024-01-01 .. 2028-12-31, UTC.
        let t = 1_704_067_200 + r.next(5 * 366 * 86_400) as i64;
        cases.push((p, t));
    }
    let input: String = cases.iter().map(|(p, t)| format!("{t}\t{p}\n")).collect();
    let mut child = std::process::Command::new("perl")
        .args([
            "-MTime::Period",
            "-ne",
            "chomp; my ($t, $p) = split /\\t/; print inPeriod($t, $p), \"\\n\";",
        ])
        .env("TZ", "UTC")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("perl");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("perl output");
    let answers: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(answers.len(), cases.len());
    let mut inside = 0;
    for ((p, t), perl) in cases.iter().zip(&answers) {
        let ours = Period::parse(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        let ours = ours.contains(&TimeParts::from_unix(*t, 0));
        let perl = match perl.as_str() {
            "1" => true,
            "0" => false,
            other => panic!("Time::Period said {other} for {p:?} at {t}"),
        };
        assert_eq!(
            ours,
            perl,
            "{p:?} at {t} ({:?})",
            TimeParts::from_unix(*t, 0)
        );
        inside += usize::from(ours);
    }
    // Both outcomes occur often enough to mean something.
    assert!(
        inside > 100 && inside < cases.len() - 100,
        "{inside} of {}",
        cases.len()
    );
}
