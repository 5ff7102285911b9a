//! IAM-shaped policies: the JSON users already write for AWS, parsed and
//! evaluated the way IAM does for identity policies. Sans-IO: no clock, no
//! files; the edge asks [`Policies::decide`] once per request.
//!
//! Rules (IAM's): a statement applies when its action and resource match
//! (wildcards `*` and `?`; actions case-insensitively, resources exactly;
//! `NotAction`/`NotResource` invert); an applicable `Deny` wins over any
//! `Allow`; without an applicable `Allow` the answer is an implicit deny.
//! A session policy (from `AssumeRole`) narrows: both must allow.

pub mod session;

use serde::Deserialize;

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy is not valid JSON of the IAM shape: {0}")]
    Shape(String),
    #[error("a statement needs Effect Allow or Deny")]
    Effect,
    #[error("a statement needs Action or NotAction, and Resource or NotResource")]
    Missing,
    #[error("Condition and Principal are not supported in identity policies here")]
    Unsupported,
}

/// What the policies say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A statement denies it.
    ExplicitDeny,
    /// No statement allows it.
    ImplicitDeny,
}

impl Decision {
    pub fn allowed(self) -> bool {
        self == Decision::Allow
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Effect {
    Allow,
    Deny,
}

/// One string or a list of them, as IAM accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawStatement {
    effect: Option<Effect>,
    action: Option<OneOrMany>,
    not_action: Option<OneOrMany>,
    resource: Option<OneOrMany>,
    not_resource: Option<OneOrMany>,
    condition: Option<serde_json::Value>,
    principal: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum RawStatements {
    One(Box<RawStatement>),
    Many(Vec<RawStatement>),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawPolicy {
    // Version, Id and Sid are accepted and carry no meaning here.
    statement: RawStatements,
}

/// Patterns that a value must (or, inverted, must not) match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Matcher {
    patterns: Vec<String>,
    inverted: bool,
    case_insensitive: bool,
}

impl Matcher {
    fn matches(&self, value: &str) -> bool {
        let any = self.patterns.iter().any(|p| {
            if self.case_insensitive {
                glob(&p.to_ascii_lowercase(), &value.to_ascii_lowercase())
            } else {
                glob(p, value)
            }
        });
        any != self.inverted
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    actions: Matcher,
    resources: Matcher,
}

/// One policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
    /// The document as given (JSON), to show and save it.
    source: String,
}

impl Policy {
    /// Parses an IAM policy document (JSON).
    pub fn parse(json: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy =
            serde_json::from_str(json).map_err(|e| PolicyError::Shape(e.to_string()))?;
        Policy::from_raw(raw, json.to_string())
    }

    /// A policy from an already parsed JSON value (a TOML table, say).
    pub fn from_value(value: serde_json::Value) -> Result<Policy, PolicyError> {
        let source = value.to_string();
        let raw: RawPolicy =
            serde_json::from_value(value).map_err(|e| PolicyError::Shape(e.to_string()))?;
        Policy::from_raw(raw, source)
    }

    /// The document (JSON).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Allows every action on every resource.
    pub fn allow_all() -> Policy {
        Policy {
            source: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#
                .into(),
            statements: vec![Statement {
                effect: Effect::Allow,
                actions: Matcher {
                    patterns: vec!["*".into()],
                    inverted: false,
                    case_insensitive: true,
                },
                resources: Matcher {
                    patterns: vec!["*".into()],
                    inverted: false,
                    case_insensitive: false,
                },
            }],
        }
    }

    fn from_raw(raw: RawPolicy, source: String) -> Result<Policy, PolicyError> {
        let statements = match raw.statement {
            RawStatements::One(s) => vec![*s],
            RawStatements::Many(v) => v,
        };
        let statements = statements
            .into_iter()
            .map(|s| {
                if s.condition.is_some() || s.principal.is_some() {
                    return Err(PolicyError::Unsupported);
                }
                let effect = s.effect.ok_or(PolicyError::Effect)?;
                let matcher =
                    |plain: Option<OneOrMany>, not: Option<OneOrMany>, ci: bool| match (plain, not)
                    {
                        (Some(p), None) => Ok(Matcher {
                            patterns: p.items().to_vec(),
                            inverted: false,
                            case_insensitive: ci,
                        }),
                        (None, Some(n)) => Ok(Matcher {
                            patterns: n.items().to_vec(),
                            inverted: true,
                            case_insensitive: ci,
                        }),
                        _ => Err(PolicyError::Missing),
                    };
                Ok(Statement {
                    effect,
                    actions: matcher(s.action, s.not_action, true)?,
                    resources: matcher(s.resource, s.not_resource, false)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { statements, source })
    }
}

/// The policies of one principal, and optionally a session policy that
/// narrows them (temporary credentials).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    pub identity: Vec<Policy>,
    pub session: Option<Vec<Policy>>,
}

fn decide_one(policies: &[Policy], action: &str, resource: &str) -> Decision {
    let mut allowed = false;
    for st in policies.iter().flat_map(|p| &p.statements) {
        if st.actions.matches(action) && st.resources.matches(resource) {
            match st.effect {
                Effect::Deny => return Decision::ExplicitDeny,
                Effect::Allow => allowed = true,
            }
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

impl Policies {
    /// Whether `action` (`service:Operation`) on `resource` (an ARN) is
    /// allowed.
    pub fn decide(&self, action: &str, resource: &str) -> Decision {
        let identity = decide_one(&self.identity, action, resource);
        match &self.session {
            None => identity,
            Some(session) => match (identity, decide_one(session, action, resource)) {
                (Decision::ExplicitDeny, _) | (_, Decision::ExplicitDeny) => Decision::ExplicitDeny,
                (Decision::Allow, Decision::Allow) => Decision::Allow,
                _ => Decision::ImplicitDeny,
            },
        }
    }
}

/// IAM's wildcard match: `*` any run of characters (also none), `?` one.
pub fn glob(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    // Greedy with backtracking to the last star: linear in practice.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < v.len() {
        if i < p.len() && (p[i] == '?' || p[i] == v[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAM: &str = "arn:aws:kinesisvideo:us-east-1:000000000000:stream/front-door/1700000000000";

    #[test]
    fn wildcards_match_like_iam() {
        assert!(glob("*", ""));
        assert!(glob("kinesisvideo:Get*", "kinesisvideo:GetMedia"));
        assert!(!glob("kinesisvideo:Get*", "kinesisvideo:PutMedia"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob("*:stream/front-*/*", CAM));
        assert!(!glob("*:stream/back-*/*", CAM));
        assert!(glob("a*b*c", "axxbyyc") && !glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn explicit_deny_wins_and_nothing_allowed_is_denied() {
        let p = Policy::parse(
            r#"{"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"},
                {"Effect": "Deny", "Action": ["kinesisvideo:DeleteStream"],
                 "Resource": "arn:aws:kinesisvideo:*:*:stream/front-door/*"}
            ]}"#,
        )
        .unwrap();
        let ps = Policies {
            identity: vec![p],
            session: None,
        };
        assert_eq!(ps.decide("kinesisvideo:PutMedia", CAM), Decision::Allow);
        assert_eq!(
            ps.decide("KinesisVideo:putmedia", CAM),
            Decision::Allow,
            "actions are case-insensitive"
        );
        assert_eq!(
            ps.decide("kinesisvideo:DeleteStream", CAM),
            Decision::ExplicitDeny
        );
        assert_eq!(ps.decide("kinesis:PutRecords", CAM), Decision::ImplicitDeny);
        assert_eq!(
            Policies::default().decide("kinesisvideo:PutMedia", CAM),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn not_action_and_not_resource_invert() {
        let p = Policy::parse(
            r#"{"Statement": {"Effect": "Allow", "NotAction": "kinesisvideo:Delete*",
                "NotResource": "arn:aws:kinesisvideo:*:*:stream/secret/*"}}"#,
        )
        .unwrap();
        let ps = Policies {
            identity: vec![p],
            session: None,
        };
        assert!(ps.decide("kinesisvideo:GetMedia", CAM).allowed());
        assert!(!ps.decide("kinesisvideo:DeleteStream", CAM).allowed());
        let secret = "arn:aws:kinesisvideo:us-east-1:0:stream/secret/1";
        assert!(!ps.decide("kinesisvideo:GetMedia", secret).allowed());
    }

    #[test]
    fn a_session_policy_only_narrows() {
        let all = Policy::allow_all();
        let watch = Policy::parse(
            r#"{"Statement": [{"Effect": "Allow", "Action": "kinesisvideo:GetHLSStreamingSessionURL",
                "Resource": "*"}]}"#,
        )
        .unwrap();
        let ps = Policies {
            identity: vec![all.clone()],
            session: Some(vec![watch.clone()]),
        };
        assert!(
            ps.decide("kinesisvideo:GetHLSStreamingSessionURL", CAM)
                .allowed()
        );
        assert!(!ps.decide("kinesisvideo:PutMedia", CAM).allowed());
        // A session policy cannot grant what the identity lacks.
        let narrow = Policies {
            identity: vec![watch],
            session: Some(vec![all]),
        };
        assert!(!narrow.decide("kinesisvideo:PutMedia", CAM).allowed());
    }

    #[test]
    fn malformed_policies_are_refused_with_a_reason() {
        for (doc, err) in [
            ("{", "JSON"),
            (
                r#"{"Statement": {"Action": "*", "Resource": "*"}}"#,
                "Effect",
            ),
            (
                r#"{"Statement": {"Effect": "Allow", "Resource": "*"}}"#,
                "Action",
            ),
            (
                r#"{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*",
                    "Condition": {"Bool": {"aws:SecureTransport": "true"}}}}"#,
                "Condition",
            ),
            (
                r#"{"Statement": {"Effect": "Maybe", "Action": "*", "Resource": "*"}}"#,
                "JSON",
            ),
        ] {
            let e = Policy::parse(doc).unwrap_err();
            assert!(e.to_string().contains(err), "{doc}: {e}");
        }
    }
}
