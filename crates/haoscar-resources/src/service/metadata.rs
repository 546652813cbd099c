//! OCF agent meta-data: parsing the XML printed by `<agent> meta-data`
//! ([`parse_meta_data`] into [`MetaData`]), OCF durations
//! ([`parse_ocf_duration`]), and checking a resource's parameters against
//! the agent's declared ones ([`check_params`]).

use std::collections::BTreeMap;
use std::time::Duration;

use super::ServiceError;

/// What an agent declares about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaData {
    pub parameters: Vec<ParamInfo>,
    pub actions: Vec<ActionInfo>,
}

impl MetaData {
    pub fn parameter(&self, name: &str) -> Option<&ParamInfo> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// The first declaration of `name` (monitor may be declared several
    /// times, for different depths / roles).
    pub fn action(&self, name: &str) -> Option<&ActionInfo> {
        self.actions.iter().find(|a| a.name == name)
    }
}

/// One `<parameter>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    pub name: String,
    pub required: bool,
    pub unique: bool,
    /// `<content type=...>`: string, integer, boolean, ... (`string` if
    /// absent).
    pub content_type: String,
    pub default: Option<String>,
    pub shortdesc: String,
}

/// One `<action>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionInfo {
    pub name: String,
    pub timeout: Option<Duration>,
    pub interval: Option<Duration>,
    pub depth: Option<u32>,
}

/// Something wrong with a resource's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamProblem {
    /// Required by the agent, not given.
    Missing { name: String },
    /// Not declared by the agent; `suggestion` is a close declared name.
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
}

impl std::fmt::Display for ParamProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamProblem::Missing { name } => write!(f, "required parameter {name:?} is missing"),
            ParamProblem::Unknown {
                name,
                suggestion: Some(s),
            } => write!(f, "unknown parameter {name:?} (did you mean {s:?}?)"),
            ParamProblem::Unknown {
                name,
                suggestion: None,
            } => write!(f, "unknown parameter {name:?}"),
        }
    }
}

/// Parses an OCF duration: `20` (seconds), `20s`, `20sec`, `100ms`,
/// `1m`, `1min`, `2h`, `2hr`, `500us`; surrounding blanks allowed.
pub fn parse_ocf_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" => Duration::from_secs(n),
        "ms" | "msec" | "msecs" => Duration::from_millis(n),
        "us" | "usec" | "usecs" => Duration::from_micros(n),
        "m" | "min" | "mins" => Duration::from_secs(n.checked_mul(60)?),
        "h" | "hr" | "hrs" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

fn is_true(v: Option<&str>) -> bool {
    matches!(
        v.map(|s| s.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

/// The text of `node`'s child `<tag>`, preferring `lang="en"`.
fn child_text(node: roxmltree::Node<'_, '_>, tag: &str) -> Option<String> {
    let mut candidates = node
        .children()
        .filter(|c| c.is_element() && c.has_tag_name(tag));
    let all: Vec<_> = candidates.by_ref().collect();
    let pick = all
        .iter()
        .find(|c| c.attribute("lang").is_none_or(|l| l.starts_with("en")))
        .or(all.first())?;
    Some(pick.text().unwrap_or("").trim().to_owned())
}

/// Parses an agent's meta-data XML. Unparsable durations are `None`.
pub fn parse_meta_data(xml: &str) -> Result<MetaData, ServiceError> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts)
        .map_err(|e| ServiceError::MetaData(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("resource-agent") {
        return Err(ServiceError::MetaData(format!(
            "root element is <{}>, not <resource-agent>",
            root.tag_name().name()
        )));
    }
    let section = |name: &str| {
        root.children()
            .find(|c| c.is_element() && c.has_tag_name(name))
    };
    let mut meta = MetaData::default();
    if let Some(params) = section("parameters") {
        for p in params
            .children()
            .filter(|c| c.is_element() && c.has_tag_name("parameter"))
        {
            let Some(name) = p.attribute("name") else {
                return Err(ServiceError::MetaData("<parameter> without name".into()));
            };
            let content = p
                .children()
                .find(|c| c.is_element() && c.has_tag_name("content"));
            meta.parameters.push(ParamInfo {
                name: name.to_owned(),
                required: is_true(p.attribute("required")),
                unique: is_true(p.attribute("unique")),
                content_type: content
                    .and_then(|c| c.attribute("type"))
                    .unwrap_or("string")
                    .to_owned(),
                default: content
                    .and_then(|c| c.attribute("default"))
                    .map(str::to_owned),
                shortdesc: child_text(p, "shortdesc").unwrap_or_default(),
            });
        }
    }
    if let Some(actions) = section("actions") {
        for a in actions
            .children()
            .filter(|c| c.is_element() && c.has_tag_name("action"))
        {
            let Some(name) = a.attribute("name") else {
                return Err(ServiceError::MetaData("<action> without name".into()));
            };
            meta.actions.push(ActionInfo {
                name: name.to_owned(),
                timeout: a.attribute("timeout").and_then(parse_ocf_duration),
                interval: a.attribute("interval").and_then(parse_ocf_duration),
                depth: a.attribute("depth").and_then(|d| d.trim().parse().ok()),
            });
        }
    }
    Ok(meta)
}

/// Required parameters that are absent, and given parameters the agent
/// does not declare (with the closest declared name as a suggestion).
pub fn check_params(meta: &MetaData, params: &BTreeMap<String, String>) -> Vec<ParamProblem> {
    let mut problems = Vec::new();
    for p in meta.parameters.iter().filter(|p| p.required) {
        if !params.contains_key(&p.name) {
            problems.push(ParamProblem::Missing {
                name: p.name.clone(),
            });
        }
    }
    for name in params.keys() {
        if meta.parameter(name).is_some() {
            continue;
        }
        let suggestion = meta
            .parameters
            .iter()
            .map(|p| (edit_distance(name, &p.name), &p.name))
            .filter(|(d, candidate)| *d <= (candidate.len() / 3).max(2))
            .min_by_key(|(d, _)| *d)
            .map(|(_, n)| n.clone());
        problems.push(ParamProblem::Unknown {
            name: name.clone(),
            suggestion,
        });
    }
    problems
}

/// Levenshtein distance (case-insensitive).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let s = Duration::from_secs;
        assert_eq!(parse_ocf_duration("20s"), Some(s(20)));
        assert_eq!(parse_ocf_duration("20"), Some(s(20)));
        assert_eq!(parse_ocf_duration(" 20 sec "), Some(s(20)));
        assert_eq!(parse_ocf_duration("1m"), Some(s(60)));
        assert_eq!(parse_ocf_duration("2min"), Some(s(120)));
        assert_eq!(parse_ocf_duration("1h"), Some(s(3600)));
        assert_eq!(
            parse_ocf_duration("100ms"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_ocf_duration("0"), Some(s(0)));
        assert_eq!(parse_ocf_duration(""), None);
        assert_eq!(parse_ocf_duration("s"), None);
        assert_eq!(parse_ocf_duration("10 parsecs"), None);
        assert_eq!(parse_ocf_duration("-1"), None);
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("binfile", "binfile"), 0);
        assert_eq!(edit_distance("binfil", "binfile"), 1);
        assert_eq!(edit_distance("bnifile", "binfile"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    const XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="T" version="1.0">
<version>1.1</version>
<parameters>
<parameter name="must" required="1" unique="1">
<shortdesc lang="de">Pflicht</shortdesc>
<shortdesc lang="en">Must be given</shortdesc>
<content type="integer" />
</parameter>
<parameter name="opt"><content default="x"/></parameter>
</parameters>
<actions>
<action name="start" timeout="20s" />
<action name="monitor" timeout="1m" interval="10" depth="10" />
<action name="meta-data" />
</actions>
</resource-agent>"#;

    #[test]
    fn parses_meta_data() {
        let m = parse_meta_data(XML).expect("parses");
        let must = m.parameter("must").expect("must");
        assert!(must.required && must.unique);
        assert_eq!(must.content_type, "integer");
        assert_eq!(must.shortdesc, "Must be given");
        assert_eq!(must.default, None);
        let opt = m.parameter("opt").expect("opt");
        assert!(!opt.required && !opt.unique);
        assert_eq!(opt.content_type, "string");
        assert_eq!(opt.default.as_deref(), Some("x"));
        let mon = m.action("monitor").expect("monitor");
        assert_eq!(mon.timeout, Some(Duration::from_secs(60)));
        assert_eq!(mon.interval, Some(Duration::from_secs(10)));
        assert_eq!(mon.depth, Some(10));
        assert_eq!(m.action("meta-data").and_then(|a| a.timeout), None);
    }

    #[test]
    fn rejects_bad_xml() {
        assert!(parse_meta_data("<nope/>").is_err());
        assert!(parse_meta_data("not xml").is_err());
    }

    #[test]
    fn param_problems() {
        let m = parse_meta_data(XML).expect("parses");
        let params: BTreeMap<String, String> = [("op", "1"), ("zzzzzz", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            check_params(&m, &params),
            vec![
                ParamProblem::Missing {
                    name: "must".into()
                },
                ParamProblem::Unknown {
                    name: "op".into(),
                    suggestion: Some("opt".into())
                },
                ParamProblem::Unknown {
                    name: "zzzzzz".into(),
                    suggestion: None
                },
            ]
        );
    }
}
