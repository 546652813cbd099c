//! Time periods in the syntax of Perl's `Time::Period` (as mon uses them
//! for `period wd {Mon-Fri} hr {7am-6pm}`): [`Period::parse`] checks a
//! period completely (an error names the part that is wrong) and
//! [`Period::contains`] says whether a moment, given as its calendar parts
//! ([`TimeParts`]), falls in it. Pure: the caller turns a clock reading
//! into local calendar parts.
//!
//! Grammar: `sub-period[, sub-period...]`, or blank (always), or `none`
//! (never), case-insensitive. A sub-period is one or more `scale {range
//! [range ...]}`; a moment is in a sub-period when, for every scale named,
//! one of its ranges (all ranges of the same scale, even when the scale is
//! repeated) contains it. Scales: `yr`/`year`, `mo`/`month` (1-12 or
//! jan..dec), `wk`/`week` (1-6, week of the month, weeks starting on
//! Sunday), `yd`/`yday` (1-366), `md`/`mday` (1-31), `wd`/`wday` (1-7 or
//! su..sa), `hr`/`hour` (0-23 or 12am, 1am..11am, 12noon, 12pm, 1pm..11pm),
//! `min`/`minute` (0-59), `sec`/`second` (0-59). A range is `v` or `v-v`,
//! inclusive; `v-v` with the first larger wraps around (not for years; a
//! two-digit year means the current century).

use std::fmt;

/// Why a period does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodError(pub String);

impl fmt::Display for PeriodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeriodError {}

/// One of the nine scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scale {
    Year,
    Month,
    Week,
    YearDay,
    MonthDay,
    WeekDay,
    Hour,
    Minute,
    Second,
}

impl Scale {
    fn from_name(s: &str) -> Option<Scale> {
        Some(match s {
            "yr" | "year" => Scale::Year,
            "mo" | "month" => Scale::Month,
            "wk" | "week" => Scale::Week,
            "yd" | "yday" => Scale::YearDay,
            "md" | "mday" => Scale::MonthDay,
            "wd" | "wday" => Scale::WeekDay,
            "hr" | "hour" => Scale::Hour,
            "min" | "minute" => Scale::Minute,
            "sec" | "second" => Scale::Second,
            _ => return None,
        })
    }
}

/// A moment in local time, as the scales see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeParts {
    /// Full year, e.g. 2026.
    pub year: i32,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub mday: u32,
    /// 0-23, 0-59, 0-59.
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl TimeParts {
    /// The calendar parts of a Unix time shifted by `offset_secs` (the
    /// local zone's offset from UTC at that moment).
    pub fn from_unix(unix_secs: i64, offset_secs: i64) -> TimeParts {
        let t = unix_secs + offset_secs;
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400) as u32;
        let (year, month, mday) = civil_from_days(days);
        TimeParts {
            year,
            month,
            mday,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
        }
    }

    /// 0 = Sunday .. 6 = Saturday.
    pub fn weekday(&self) -> u32 {
        let days = days_from_civil(self.year, self.month, self.mday);
        // 1970-01-01 was a Thursday (4).
        (days + 4).rem_euclid(7) as u32
    }

    /// 0-365.
    pub fn yearday(&self) -> u32 {
        (days_from_civil(self.year, self.month, self.mday) - days_from_civil(self.year, 1, 1))
            as u32
    }

    /// Week of the month, 0-5: weeks start on Sunday, the first (partial)
    /// week is 0.
    pub fn week(&self) -> u32 {
        let wd = self.weekday();
        let first = (wd + 7 - (self.mday - 1) % 7) % 7;
        (self.mday - 1 + first) / 7
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((y + i64::from(m <= 2)) as i32, m, d)
}

/// A range of one scale, in that scale's own values (years as written:
/// two-digit years are resolved against the moment's century).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    from: i64,
    to: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SubPeriod {
    /// Each scale named, with all its ranges.
    scales: Vec<(Scale, Vec<Range>)>,
}

/// A parsed period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period(Inner);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inner {
    /// Blank: every moment.
    Always,
    /// `none`: no moment.
    Never,
    Subs(Vec<SubPeriod>),
}

impl Period {
    /// Parses a period; the error says which part is wrong.
    pub fn parse(text: &str) -> Result<Period, PeriodError> {
        let text = text.trim().to_ascii_lowercase();
        if text.is_empty() {
            return Ok(Period(Inner::Always));
        }
        if text == "none" {
            return Ok(Period(Inner::Never));
        }
        let mut subs = Vec::new();
        for sub in text.split(',') {
            subs.push(parse_sub(sub.trim())?);
        }
        Ok(Period(Inner::Subs(subs)))
    }

    /// Blank: every moment is in it.
    pub fn is_always(&self) -> bool {
        self.0 == Inner::Always
    }

    /// Whether the moment falls in the period.
    pub fn contains(&self, t: &TimeParts) -> bool {
        match &self.0 {
            Inner::Always => true,
            Inner::Never => false,
            Inner::Subs(subs) => subs.iter().any(|s| {
                s.scales
                    .iter()
                    .all(|(scale, ranges)| ranges.iter().any(|r| in_range(*scale, *r, t)))
            }),
        }
    }
}

fn parse_sub(sub: &str) -> Result<SubPeriod, PeriodError> {
    let err = |m: String| PeriodError(format!("{m} in {sub:?}"));
    if sub.is_empty() {
        return Err(PeriodError("empty sub-period (a stray ',')".into()));
    }
    let mut scales: Vec<(Scale, Vec<Range>)> = Vec::new();
    let mut rest = sub;
    while !rest.trim().is_empty() {
        let open = rest
            .find('{')
            .ok_or_else(|| err("expected `scale {ranges}`".into()))?;
        let close = rest[open..]
            .find('}')
            .map(|c| c + open)
            .ok_or_else(|| err("missing '}'".into()))?;
        let name = rest[..open].trim();
        let scale = Scale::from_name(name).ok_or_else(|| {
            err(format!(
                "unknown scale {name:?} (expected yr, mo, wk, yd, md, wd, hr, min, sec or their long names)"
            ))
        })?;
        let body = &rest[open + 1..close];
        if body.contains('{') {
            return Err(err("'{' inside a range list".into()));
        }
        let ranges = parse_ranges(scale, body).map_err(|m| err(m.0))?;
        if ranges.is_empty() {
            return Err(err(format!("no range for {name}")));
        }
        match scales.iter_mut().find(|(s, _)| *s == scale) {
            Some((_, rs)) => rs.extend(ranges),
            None => scales.push((scale, ranges)),
        }
        rest = &rest[close + 1..];
    }
    Ok(SubPeriod { scales })
}

fn parse_ranges(scale: Scale, body: &str) -> Result<Vec<Range>, PeriodError> {
    // "a - b" is one range: join the dashes first.
    let mut joined = String::new();
    for (i, part) in body.split('-').enumerate() {
        if i > 0 {
            joined = joined.trim_end().to_string();
            joined.push('-');
            joined.push_str(part.trim_start());
        } else {
            joined.push_str(part);
        }
    }
    let mut out = Vec::new();
    for tok in joined.split_whitespace() {
        let (a, b) = match tok.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (tok, None),
        };
        let from = value(scale, a)?;
        let to = match b {
            Some(b) => value(scale, b)?,
            None => from,
        };
        out.push(Range { from, to });
    }
    Ok(out)
}

/// A range endpoint in the scale's own numbering (month 1-12, weekday
/// 0 = Sunday, week 0-5, yday 0-365, ...).
fn value(scale: Scale, v: &str) -> Result<i64, PeriodError> {
    let bad = |what: &str| PeriodError(format!("{v:?} is not a valid {what}"));
    let num = |lo: i64, hi: i64, what: &str| -> Result<i64, PeriodError> {
        let n: i64 = v.parse().map_err(|_| bad(what))?;
        if v.starts_with('+') || n < lo || n > hi {
            return Err(bad(what));
        }
        Ok(n)
    };
    match scale {
        Scale::Year => {
            let n: i64 = v
                .parse()
                .map_err(|_| bad("year (0-99 or 1970 and later)"))?;
            if v.starts_with('+') || n < 0 || (n > 99 && n < 1970) {
                return Err(bad("year (0-99 or 1970 and later)"));
            }
            Ok(n)
        }
        Scale::Month => {
            const NAMES: [&str; 12] = [
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ];
            if v.starts_with(|c: char| c.is_ascii_alphabetic()) {
                let key = v.get(..3).ok_or_else(|| bad("month"))?;
                let i = NAMES
                    .iter()
                    .position(|n| *n == key)
                    .ok_or_else(|| bad("month"))?;
                Ok(i as i64 + 1)
            } else {
                num(1, 12, "month (1-12 or jan..dec)")
            }
        }
        Scale::Week => Ok(num(1, 6, "week of the month (1-6)")? - 1),
        Scale::YearDay => Ok(num(1, 366, "day of the year (1-366)")? - 1),
        Scale::MonthDay => num(1, 31, "day of the month (1-31)"),
        Scale::WeekDay => {
            const NAMES: [&str; 7] = ["su", "mo", "tu", "we", "th", "fr", "sa"];
            if v.starts_with(|c: char| c.is_ascii_alphabetic()) {
                let key = v.get(..2).ok_or_else(|| bad("weekday"))?;
                let i = NAMES
                    .iter()
                    .position(|n| *n == key)
                    .ok_or_else(|| bad("weekday"))?;
                Ok(i as i64)
            } else {
                Ok(num(1, 7, "weekday (1-7 or su..sa)")? - 1)
            }
        }
        Scale::Hour => {
            let what = "hour (0-23, 12am, 1am-11am, 12noon, 12pm, 1pm-11pm)";
            let (digits, suffix) =
                v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
            let n: i64 = digits.parse().map_err(|_| bad(what))?;
            let h = match suffix {
                "" => n,
                "am" if (1..=12).contains(&n) => n % 12,
                "pm" if (1..=12).contains(&n) => n % 12 + 12,
                "noon" if n == 12 => 12,
                _ => return Err(bad(what)),
            };
            if !(0..=23).contains(&h) {
                return Err(bad(what));
            }
            Ok(h)
        }
        Scale::Minute => num(0, 59, "minute (0-59)"),
        Scale::Second => num(0, 59, "second (0-59)"),
    }
}

fn in_range(scale: Scale, r: Range, t: &TimeParts) -> bool {
    let now: i64 = match scale {
        Scale::Year => i64::from(t.year),
        Scale::Month => i64::from(t.month),
        Scale::Week => i64::from(t.week()),
        Scale::YearDay => i64::from(t.yearday()),
        Scale::MonthDay => i64::from(t.mday),
        Scale::WeekDay => i64::from(t.weekday()),
        Scale::Hour => i64::from(t.hour),
        Scale::Minute => i64::from(t.minute),
        Scale::Second => i64::from(t.second),
    };
    if scale == Scale::Year {
        // Two-digit years belong to the moment's century; years never wrap.
        let century = i64::from(t.year) / 100 * 100;
        let full = |y: i64| if y <= 99 { century + y } else { y };
        let (a, b) = (full(r.from), full(r.to));
        return a.min(b) <= now && now <= a.max(b);
    }
    if r.from <= r.to {
        r.from <= now && now <= r.to
    } else {
        now >= r.from || now <= r.to
    }
}

#[cfg(test)]
mod tests;
