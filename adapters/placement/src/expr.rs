//! The constraint and affinity language of Docker Swarm classic: parsed, validated and
//! evaluated against nodes. Pure: no I/O (compiled regular expressions are cached by
//! pattern, which changes nothing but the time).
//!
//! # The language
//!
//! Users write expressions as environment entries (`docker run -e constraint:region==us-east
//! -e affinity:container==db`) or as the labels [`CONSTRAINTS_LABEL`] / [`AFFINITIES_LABEL`],
//! which hold JSON arrays of the same expressions without the prefix
//! (`--label 'com.docker.swarm.constraints=["region==us-east"]'`). Every expression must hold.
//!
//! An expression is `KEY OP VALUE`:
//!
//! - `KEY` starts with an ASCII letter or `_` and continues with ASCII letters, digits, `_`,
//!   `-` and `.`; it is case-sensitive.
//! - `OP` is `==` or `!=`; `==~` and `!=~` are the *soft* variants, which [`select`] drops
//!   (and reports) when no candidate node satisfies them. A soft expression never rescues a
//!   failed hard one.
//! - `VALUE` is a literal, a glob or a regular expression, all case-sensitive:
//!   - `/.../`: a regular expression, searched unanchored (`/[0-2][0-5]/` matches `x15y`);
//!     `/(?i)ubuntu/` ignores case. Syntax of the [`regex`] crate, which is RE2's, as Go's.
//!   - a value with `*`: a glob anchored at both ends, where `*` matches any run of
//!     characters and every other character stands for itself (`us-*`).
//!   - anything else: a literal, compared whole.
//!
//! What a key names on a node:
//!
//! | kind | key | candidates |
//! |---|---|---|
//! | constraint | `node` | the node's name and its id |
//! | constraint | any other | the fact of that name; a missing fact is the empty string |
//! | affinity | `container` | the id and the names of every container on the node |
//! | affinity | `image` | the id, every `repository:tag` and every bare repository of every image on the node |
//! | affinity | any other | the value of that label on every container on the node (the empty string on a container without it) |
//!
//! `==` holds when some candidate matches the value, `!=` when none does. A node without
//! containers offers no candidates to the affinities, so there `affinity:...==...` fails and
//! `affinity:...!=...` holds.
//!
//! # Differences from Swarm classic
//!
//! Swarm classic (`scheduler/filter/expr.go`, `affinity.go`, `constraint.go`,
//! `cluster/config.go`) is the reference; where it was lenient this module is strict:
//!
//! - A value starting with `/` but not ending with one, an empty `//`, and an invalid
//!   regular expression are errors. Swarm took the first as an anchored pattern, crashed on
//!   a lone `/`, and let an invalid one silently match nothing.
//! - Operators: `===`, `==!`, `!==`, `>=`, `=`, `=~`... are errors naming the operator
//!   (Swarm accepted a value starting with `=` or `!`, so `constraint:a===b` wanted `=b`).
//!   A value with a second `==`/`!=`, a `~` anywhere but right after the operator, leading
//!   or trailing whitespace, or a control character is an error.
//! - A label that is not a JSON array of strings is an error (Swarm ignored it silently).
//! - A literal is a literal: Swarm turned every value without slashes into an anchored
//!   regular expression with `*` made `.*`, so `.` matched any character and `node-[12]`
//!   was a character class. Here only `*` is special; other patterns need `/.../`.
//! - Soft expressions are dropped one at a time (see [`select`]); Swarm retried the whole
//!   placement without any soft expression as soon as one of them failed.
//!
//! And where it accepts more than Swarm classic did:
//!
//! - One-character keys (Swarm's key pattern needed two characters).
//! - Any printable character in a value (Swarm allowed only ASCII letters, digits and
//!   ``: - _ . * / ( ) ? + [ ] \ ^ $ |`` and whitespace, so not even `{2}` in a regular
//!   expression).
//! - Container and image ids may be abbreviated to 12 or more hexadecimal digits, as Swarm's
//!   documentation promised (`affinity:container==87c4376856a8`) but its filter did not do:
//!   it compared whole ids only. Image ids match with or without their `sha256:`.
//! - Every name of a container counts (Swarm used the first one only), except link aliases.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError};

use regex::Regex;

/// The label Swarm classic recorded constraints under: a JSON array of expressions without
/// their `constraint:` prefix, e.g. `["region==us-east","storage==ssd"]`.
pub const CONSTRAINTS_LABEL: &str = "com.docker.swarm.constraints";

/// The label Swarm classic recorded affinities under: a JSON array of expressions without
/// their `affinity:` prefix, e.g. `["container==redis","image==nginx"]`.
pub const AFFINITIES_LABEL: &str = "com.docker.swarm.affinities";

/// The namespace, inside a Swarm mode node's labels, under which the placement adapter
/// publishes a node's facts: fact `os.family` is node label `fact.os.family`, which a Swarm
/// mode constraint names `node.labels.fact.os.family` (see [`swarm_constraint`]).
pub const SWARM_FACT_LABEL_PREFIX: &str = "fact.";

/// How many hexadecimal digits an abbreviated container or image id needs at least (the
/// length `docker ps` shows); shorter ones match whole ids only, so that short names
/// such as `cafe` are not taken for ids.
pub const MIN_ID_PREFIX: usize = 12;

/// The characters an operator is made of; a run of them around `==`/`!=` is the operator.
const OPERATOR_CHARS: &[char] = &['=', '!', '~', '<', '>'];

/// What an expression constrains, as its prefix (or the label it came from) said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `constraint:` — about the node itself: its facts, its name or id.
    Constraint,
    /// `affinity:` — about what the node holds: containers, images, container labels.
    Affinity,
}

impl Kind {
    /// The environment prefix, exactly as it must be written: `constraint:` or `affinity:`.
    ///
    /// ```
    /// use powerstrip_placement::expr::Kind;
    /// assert_eq!(Kind::Affinity.prefix(), "affinity:");
    /// ```
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Constraint => "constraint:",
            Kind::Affinity => "affinity:",
        }
    }

    /// The label expressions of this kind are recorded under: [`CONSTRAINTS_LABEL`] or
    /// [`AFFINITIES_LABEL`].
    ///
    /// ```
    /// use powerstrip_placement::expr::Kind;
    /// assert_eq!(Kind::Constraint.label(), "com.docker.swarm.constraints");
    /// ```
    pub fn label(self) -> &'static str {
        match self {
            Kind::Constraint => CONSTRAINTS_LABEL,
            Kind::Affinity => AFFINITIES_LABEL,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Constraint => "constraint",
            Kind::Affinity => "affinity",
        })
    }
}

/// The comparison: `==` (some candidate matches) or `!=` (no candidate matches).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `==`, or `==~` when soft.
    Eq,
    /// `!=`, or `!=~` when soft.
    Ne,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "==",
            Op::Ne => "!=",
        })
    }
}

/// A glob: `*` matches any run of characters (including none), every other character
/// stands for itself, and the whole candidate must match.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Glob {
    /// The pattern as written, e.g. `us-*`.
    pattern: String,
}

impl Glob {
    /// A glob from its pattern (any string; one without `*` matches only itself).
    ///
    /// ```
    /// use powerstrip_placement::expr::Glob;
    /// let glob = Glob::new("ub*t*");
    /// assert!(glob.is_match("ubuntu"));
    /// assert!(!glob.is_match("debian"));
    /// ```
    pub fn new(pattern: impl Into<String>) -> Self {
        Glob {
            pattern: pattern.into(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `candidate`, whole, matches the pattern.
    pub fn is_match(&self, candidate: &str) -> bool {
        let mut parts = self.pattern.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(rest) = candidate.strip_prefix(first) else {
            return false;
        };
        let mut middle: Vec<&str> = parts.collect();
        let Some(last) = middle.pop() else {
            // No `*` at all: the prefix was the whole pattern.
            return rest.is_empty();
        };
        let Some(mut rest) = rest.strip_suffix(last) else {
            return false;
        };
        // Each middle part at its leftmost place leaves the most room for the next ones.
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

/// What the value of an expression is.
#[derive(Clone, Debug)]
pub enum Value {
    /// A value compared whole: `us-east`.
    Literal(String),
    /// A value with `*`: `us-*`.
    Glob(Glob),
    /// A value between slashes, compiled (without the slashes) and searched unanchored:
    /// `/[0-2][0-5]/`.
    Regex(Regex),
}

impl Value {
    /// Whether one candidate matches: a literal equals it, a glob matches it whole, a
    /// regular expression matches somewhere in it.
    pub fn is_match(&self, candidate: &str) -> bool {
        match self {
            Value::Literal(literal) => literal == candidate,
            Value::Glob(glob) => glob.is_match(candidate),
            Value::Regex(regex) => regex.is_match(candidate),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Literal(a), Value::Literal(b)) => a == b,
            (Value::Glob(a), Value::Glob(b)) => a == b,
            (Value::Regex(a), Value::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    /// The value as it is written in an expression: `us-east`, `us-*`, `/[0-2][0-5]/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Literal(literal) => f.write_str(literal),
            Value::Glob(glob) => f.write_str(glob.as_str()),
            Value::Regex(regex) => write!(f, "/{}/", regex.as_str()),
        }
    }
}

/// One parsed and validated expression, such as `constraint:region==~us-*`.
///
/// Build it with [`parse`], [`Expr::parse`], [`from_env`] or [`from_labels`]; its parts
/// are read through accessors so that they always agree with [`Expr::text`], which is what
/// [`to_labels`] records. `Display` shows it the way it is written in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    /// Constraint or affinity.
    kind: Kind,
    /// What is compared: a fact, `node`, `container`, `image` or a container label.
    key: String,
    /// `==` or `!=`.
    op: Op,
    /// Written `==~` / `!=~`: dropped when no candidate satisfies it.
    soft: bool,
    /// What the key is compared with.
    value: Value,
    /// The expression without its prefix, exactly as written (`region==~us-*`): what Swarm
    /// classic recorded in its labels, and what messages quote.
    text: String,
}

impl Expr {
    /// Parses an expression of a known kind, written without its prefix (as in the labels):
    /// `Expr::parse(Kind::Constraint, "region==us-east")`.
    ///
    /// ```
    /// use powerstrip_placement::expr::{Expr, Kind, Op};
    /// let expr = Expr::parse(Kind::Affinity, "image!=~redis")?;
    /// assert_eq!((expr.key(), expr.op(), expr.is_soft()), ("image", Op::Ne, true));
    /// assert_eq!(expr.to_string(), "affinity:image!=~redis");
    /// # Ok::<(), powerstrip_placement::expr::ExprError>(())
    /// ```
    ///
    /// # Errors
    /// [`ExprError::Invalid`] naming the expression (with its prefix) and the problem.
    pub fn parse(kind: Kind, text: &str) -> Result<Expr, ExprError> {
        parse_body(kind, text).map_err(|problem| ExprError::Invalid {
            expr: format!("{}{text}", kind.prefix()),
            problem,
        })
    }

    /// Constraint or affinity.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The key: a fact name, `node`, `container`, `image` or a container label.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `==` or `!=`.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Whether it was written `==~` / `!=~`.
    pub fn is_soft(&self) -> bool {
        self.soft
    }

    /// What the key is compared with.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The expression without its prefix, exactly as written: `region==~us-*`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether `node` satisfies this expression (softness aside: see [`select`]).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use powerstrip_placement::expr::{parse, Node};
    /// let facts = BTreeMap::from([("os.family".to_string(), "Debian".to_string())]);
    /// let node = Node { id: "n1", name: "alpha", facts: &facts, containers: &[], images: &[] };
    /// assert!(parse("constraint:os.family==Debian")?.matches(&node));
    /// assert!(!parse("constraint:os.family==debian")?.matches(&node));
    /// assert!(parse("constraint:os.family==/(?i)debian/")?.matches(&node));
    /// assert!(parse("constraint:kernel!=Linux")?.matches(&node)); // missing fact: ""
    /// assert!(!parse("affinity:container==db")?.matches(&node));
    /// # Ok::<(), powerstrip_placement::expr::ExprError>(())
    /// ```
    pub fn matches(&self, node: &Node<'_>) -> bool {
        let found = match (self.kind, self.key.as_str()) {
            (Kind::Constraint, "node") => self.any([node.id, node.name]),
            (Kind::Constraint, key) => self.any([node.facts.get(key).map_or("", String::as_str)]),
            (Kind::Affinity, "container") => node.containers.iter().any(|container| {
                self.any(container.names()) || self.names_id(&container.id, false)
            }),
            (Kind::Affinity, "image") => node.images.iter().any(|image| {
                let tags = image.tags();
                self.any(tags.clone().chain(tags.map(repository))) || self.names_id(&image.id, true)
            }),
            (Kind::Affinity, label) => self.any(
                node.containers
                    .iter()
                    .map(|container| container.labels.get(label).map_or("", String::as_str)),
            ),
        };
        match self.op {
            Op::Eq => found,
            Op::Ne => !found,
        }
    }

    /// What `node` has for this expression's key, for messages: `x86_64`, `(none)`,
    /// `alpha (id n1)`, `containers: db, web`, `images: redis:latest`, `no containers`,
    /// `containers with com.example.type: web=frontend`.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use powerstrip_placement::expr::{parse, Container, Node};
    /// let facts = BTreeMap::new();
    /// let containers = [Container { id: "0123456789abcdef".into(), names: vec!["/db".into()], ..Default::default() }];
    /// let node = Node { id: "n1", name: "alpha", facts: &facts, containers: &containers, images: &[] };
    /// assert_eq!(parse("affinity:container==web")?.value_on(&node), "containers: db");
    /// assert_eq!(parse("constraint:arch==x86_64")?.value_on(&node), "(none)");
    /// # Ok::<(), powerstrip_placement::expr::ExprError>(())
    /// ```
    pub fn value_on(&self, node: &Node<'_>) -> String {
        match (self.kind, self.key.as_str()) {
            (Kind::Constraint, "node") => format!("{} (id {})", node.name, node.id),
            (Kind::Constraint, key) => match node.facts.get(key) {
                None => "(none)".to_string(),
                Some(value) if value.is_empty() => "(empty)".to_string(),
                Some(value) => value.clone(),
            },
            (Kind::Affinity, "container") => {
                if node.containers.is_empty() {
                    "no containers".to_string()
                } else {
                    let names: Vec<String> = node
                        .containers
                        .iter()
                        .map(Container::display_name)
                        .collect();
                    format!("containers: {}", listed(&names))
                }
            }
            (Kind::Affinity, "image") => {
                if node.images.is_empty() {
                    "no images".to_string()
                } else {
                    let names: Vec<String> = node
                        .images
                        .iter()
                        .flat_map(|image| {
                            let tags: Vec<String> = image.tags().map(str::to_string).collect();
                            if tags.is_empty() {
                                vec![short_id(&image.id).to_string()]
                            } else {
                                tags
                            }
                        })
                        .collect();
                    format!("images: {}", listed(&names))
                }
            }
            (Kind::Affinity, label) => {
                let labelled: Vec<String> = node
                    .containers
                    .iter()
                    .filter_map(|container| {
                        let value = container.labels.get(label)?;
                        Some(format!("{}={value}", container.display_name()))
                    })
                    .collect();
                if labelled.is_empty() {
                    format!("no container with label {label}")
                } else {
                    format!("containers with {label}: {}", listed(&labelled))
                }
            }
        }
    }

    /// Whether the value matches one of `candidates`.
    fn any<'c>(&self, candidates: impl IntoIterator<Item = &'c str>) -> bool {
        candidates
            .into_iter()
            .any(|candidate| self.value.is_match(candidate))
    }

    /// Whether the value names the container or image `id`: matches it whole, or, as a
    /// literal of at least [`MIN_ID_PREFIX`] hexadecimal digits, begins it. With `digest`
    /// (images), ids and values match with or without their `sha256:`.
    fn names_id(&self, id: &str, digest: bool) -> bool {
        let bare = if digest { strip_digest(id) } else { id };
        if self.any([id, bare]) {
            return true;
        }
        let Value::Literal(literal) = &self.value else {
            return false;
        };
        let wanted = if digest {
            strip_digest(literal)
        } else {
            literal.as_str()
        };
        wanted.len() >= MIN_ID_PREFIX
            && wanted
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && bare.starts_with(wanted)
    }
}

impl fmt::Display for Expr {
    /// The expression as an environment entry: `constraint:region==~us-*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.prefix(), self.text)
    }
}

impl FromStr for Expr {
    type Err = ExprError;

    /// [`parse`].
    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        parse(entry)
    }
}

/// What is wrong with an expression (inside an [`ExprError`], which names the expression).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// No operator at all: `foo`.
    #[error("expected KEY==VALUE or KEY!=VALUE (or the soft ==~ and !=~), like `region==us-east`")]
    NoOperator,
    /// An operator that is not `==`, `!=`, `==~` or `!=~`: `>=`, `=`, `===`, `==!`.
    #[error("`{0}` is not an operator: use ==, != or their soft variants ==~ and !=~")]
    UnknownOperator(String),
    /// Nothing before the operator: `==x`.
    #[error("the key before the operator is empty")]
    EmptyKey,
    /// A key with characters outside the key alphabet: `1node`, `no*de`, `node `.
    #[error(
        "`{0}` is not a valid key: a key starts with a letter or `_` and continues with letters, digits, `_`, `-` or `.`"
    )]
    BadKey(String),
    /// Nothing after the operator: `node==`.
    #[error("the value after the operator is empty")]
    EmptyValue,
    /// `node== x`, `node==x `.
    #[error("the value starts or ends with whitespace")]
    Whitespace,
    /// A control character (tab, newline...) anywhere in the expression.
    #[error("the expression contains a control character")]
    ControlCharacter,
    /// `region==us~`.
    #[error(
        "`~` may only follow the operator, to make the expression soft (==~ or !=~); for a literal `~` use a regular expression such as /~/"
    )]
    Tilde,
    /// `a==b==c`, `a!=b==c`.
    #[error("the value contains a second operator (`==` or `!=`)")]
    SecondOperator,
    /// `/abc`.
    #[error(
        "the value starts with `/` but does not end with one: write a regular expression between slashes, like /[0-2][0-5]/"
    )]
    UnclosedRegex,
    /// `//`.
    #[error("the regular expression between the slashes is empty")]
    EmptyRegex,
    /// `/[/`: the regular expression does not compile.
    #[error("invalid regular expression: {0}")]
    InvalidRegex(String),
}

/// Why expressions could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExprError {
    /// [`parse`] was given an entry without the `constraint:` or `affinity:` prefix.
    #[error(
        "`{entry}` is not a placement expression: it must start with `constraint:` or `affinity:`"
    )]
    NotAnExpression {
        /// The entry as written.
        entry: String,
    },
    /// An expression from the environment (or [`parse`], [`Expr::parse`]) is invalid.
    #[error("invalid placement expression `{expr}`: {problem}")]
    Invalid {
        /// The expression with its prefix, as written: `constraint:foo>=3`.
        expr: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// An expression inside [`CONSTRAINTS_LABEL`] or [`AFFINITIES_LABEL`] is invalid.
    #[error("invalid placement expression `{expr}` in label `{label}`: {problem}")]
    InvalidInLabel {
        /// Which label.
        label: &'static str,
        /// The expression as written in the label: `foo>=3`.
        expr: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// [`CONSTRAINTS_LABEL`] or [`AFFINITIES_LABEL`] does not hold a JSON array of strings.
    #[error(
        "label `{label}` must hold a JSON array of strings, like [\"region==us-east\"]: {reason}"
    )]
    BadLabel {
        /// Which label.
        label: &'static str,
        /// What the JSON parser said.
        reason: String,
    },
}

impl ExprError {
    /// What is wrong with the expression, when the error is about one expression.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ExprError::Invalid { problem, .. } | ExprError::InvalidInLabel { problem, .. } => {
                Some(problem)
            }
            ExprError::NotAnExpression { .. } | ExprError::BadLabel { .. } => None,
        }
    }
}

/// Parses one environment entry: `constraint:...` or `affinity:...` (exactly these
/// lower-case prefixes).
///
/// ```
/// use powerstrip_placement::expr::{parse, Kind, Op, Problem, Value};
///
/// let expr = parse("constraint:os==/(?i)ubuntu/")?;
/// assert_eq!(expr.kind(), Kind::Constraint);
/// assert_eq!(expr.key(), "os");
/// assert_eq!(expr.op(), Op::Eq);
/// assert!(!expr.is_soft());
/// assert!(matches!(expr.value(), Value::Regex(re) if re.as_str() == "(?i)ubuntu"));
///
/// assert!(parse("affinity:image==~redis")?.is_soft());
///
/// let err = parse("constraint:foo>=3").unwrap_err();
/// assert_eq!(err.problem(), Some(&Problem::UnknownOperator(">=".into())));
/// assert!(err.to_string().contains("`constraint:foo>=3`"));
/// assert!(matches!(parse("constraint:os==/ubuntu").unwrap_err().problem(), Some(Problem::UnclosedRegex)));
/// # Ok::<(), powerstrip_placement::expr::ExprError>(())
/// ```
///
/// # Errors
/// [`ExprError::NotAnExpression`] without one of the prefixes; [`ExprError::Invalid`],
/// naming the entry and the [`Problem`], for an invalid expression.
pub fn parse(entry: &str) -> Result<Expr, ExprError> {
    match split_prefix(entry) {
        Some((kind, text)) => Expr::parse(kind, text),
        None => Err(ExprError::NotAnExpression {
            entry: entry.to_string(),
        }),
    }
}

/// Takes the expressions out of a container's environment: every entry starting with exactly
/// `constraint:` or `affinity:` is parsed and removed; the other entries (including
/// `CONSTRAINT:...` and Swarm classic's `reschedule:` and `whitelist:`) are returned
/// unchanged, in order.
///
/// ```
/// use powerstrip_placement::expr::from_env;
/// let (exprs, env) = from_env(["PATH=/bin", "constraint:region==us-*", "CONSTRAINT:x==y"])?;
/// assert_eq!(exprs.len(), 1);
/// assert_eq!(env, ["PATH=/bin", "CONSTRAINT:x==y"]);
/// # Ok::<(), powerstrip_placement::expr::ExprError>(())
/// ```
///
/// # Errors
/// [`ExprError::Invalid`] for the first invalid expression.
pub fn from_env<I>(env: I) -> Result<(Vec<Expr>, Vec<String>), ExprError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut exprs = Vec::new();
    let mut rest = Vec::new();
    for entry in env {
        let entry = entry.as_ref();
        match split_prefix(entry) {
            Some((kind, text)) => exprs.push(Expr::parse(kind, text)?),
            None => rest.push(entry.to_string()),
        }
    }
    Ok((exprs, rest))
}

/// Reads the expressions recorded in a container's labels: [`CONSTRAINTS_LABEL`] (read
/// first) and [`AFFINITIES_LABEL`], each a JSON array of expressions without their prefix.
/// Other labels are ignored. Swarm classic read these labels first and then appended the
/// environment's expressions.
///
/// ```
/// use std::collections::BTreeMap;
/// use powerstrip_placement::expr::{from_labels, Kind};
/// let labels = BTreeMap::from([
///     ("com.docker.swarm.affinities".to_string(), r#"["container==db"]"#.to_string()),
///     ("com.docker.swarm.constraints".to_string(), r#"["architecture==x86_64"]"#.to_string()),
/// ]);
/// let exprs = from_labels(&labels)?;
/// assert_eq!(exprs[0].kind(), Kind::Constraint);
/// assert_eq!(exprs[1].to_string(), "affinity:container==db");
/// # Ok::<(), powerstrip_placement::expr::ExprError>(())
/// ```
///
/// # Errors
/// [`ExprError::BadLabel`] when a label is not a JSON array of strings;
/// [`ExprError::InvalidInLabel`] for an invalid expression in one.
pub fn from_labels<I, K, V>(labels: I) -> Result<Vec<Expr>, ExprError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut found: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (key, value) in labels {
        let kind = match key.as_ref() {
            CONSTRAINTS_LABEL => Kind::Constraint,
            AFFINITIES_LABEL => Kind::Affinity,
            _ => continue,
        };
        let entries: Vec<String> =
            serde_json::from_str(value.as_ref()).map_err(|err| ExprError::BadLabel {
                label: kind.label(),
                reason: err.to_string(),
            })?;
        found[kind_slot(kind)].extend(entries);
    }
    let mut exprs = Vec::new();
    for kind in [Kind::Constraint, Kind::Affinity] {
        for text in &found[kind_slot(kind)] {
            let expr = parse_body(kind, text).map_err(|problem| ExprError::InvalidInLabel {
                label: kind.label(),
                expr: text.clone(),
                problem,
            })?;
            exprs.push(expr);
        }
    }
    Ok(exprs)
}

/// The labels a container created with `exprs` records them under, as Swarm classic did:
/// [`CONSTRAINTS_LABEL`] then [`AFFINITIES_LABEL`], each a JSON array of the expressions'
/// [`Expr::text`] in order; a kind without expressions gets no label. [`from_labels`] reads
/// them back.
///
/// ```
/// use powerstrip_placement::expr::{from_env, to_labels};
/// let (exprs, _) = from_env(["constraint:region==us-*", "affinity:image==~redis"])?;
/// assert_eq!(to_labels(&exprs), [
///     ("com.docker.swarm.constraints".to_string(), r#"["region==us-*"]"#.to_string()),
///     ("com.docker.swarm.affinities".to_string(), r#"["image==~redis"]"#.to_string()),
/// ]);
/// # Ok::<(), powerstrip_placement::expr::ExprError>(())
/// ```
pub fn to_labels(exprs: &[Expr]) -> Vec<(String, String)> {
    [Kind::Constraint, Kind::Affinity]
        .into_iter()
        .filter_map(|kind| {
            let texts: Vec<serde_json::Value> = exprs
                .iter()
                .filter(|expr| expr.kind == kind)
                .map(|expr| serde_json::Value::from(expr.text.as_str()))
                .collect();
            (!texts.is_empty()).then(|| {
                (
                    kind.label().to_string(),
                    serde_json::Value::Array(texts).to_string(),
                )
            })
        })
        .collect()
}

/// A container on a node, as far as affinities care.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// The full id.
    pub id: String,
    /// The names as Docker lists them (`/web`; the leading `/` is optional). Link aliases
    /// (`/web/db`) are ignored.
    pub names: Vec<String>,
    /// The container's labels, for `affinity:LABEL==VALUE`.
    pub labels: BTreeMap<String, String>,
}

impl Container {
    /// The names without their leading `/`, link aliases left out.
    fn names(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .map(|name| name.strip_prefix('/').unwrap_or(name))
            .filter(|name| !name.contains('/'))
    }

    /// The first name, or else the short id.
    fn display_name(&self) -> String {
        self.names()
            .next()
            .unwrap_or_else(|| short_id(&self.id))
            .to_string()
    }
}

/// An image on a node, as far as `affinity:image==` cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// The id, usually `sha256:<64 hex digits>`.
    pub id: String,
    /// `repository:tag` references as Docker lists them (`redis:latest`,
    /// `localhost:5000/app:1.2`); `<none>:<none>` is ignored.
    pub repo_tags: Vec<String>,
}

impl Image {
    /// The tags, `<none>` left out.
    fn tags(&self) -> impl Iterator<Item = &str> + Clone {
        self.repo_tags
            .iter()
            .map(String::as_str)
            .filter(|tag| !tag.starts_with("<none>"))
    }
}

/// What a node offers to the expressions.
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    /// The node's id (Swarm mode node id, or the engine's id on a single host):
    /// `constraint:node==` matches it.
    pub id: &'a str,
    /// The node's name (its hostname in Swarm mode): `constraint:node==` matches it.
    pub name: &'a str,
    /// The node's facts under their flat dotted names (`os.family`): what every other
    /// constraint key names.
    pub facts: &'a BTreeMap<String, String>,
    /// The containers on the node: for `affinity:container==` and label affinities.
    pub containers: &'a [Container],
    /// The images on the node: for `affinity:image==`.
    pub images: &'a [Image],
}

/// The outcome of [`select`].
#[derive(Clone, Debug)]
pub struct Selection<'e, 'n> {
    /// The nodes that satisfy every hard expression and every kept soft one, in their
    /// original order. Empty exactly when `unsatisfied` is set (or there were no nodes).
    pub nodes: Vec<&'n Node<'n>>,
    /// The hard expression at which no candidate was left, if any: the one to name in the
    /// refusal. It may be satisfiable alone, but not together with the ones before it.
    pub unsatisfied: Option<&'e Expr>,
    /// The soft expressions dropped because no remaining candidate satisfied them, in
    /// order: the caller logs them. Empty when `unsatisfied` is set.
    pub dropped: Vec<&'e Expr>,
}

impl Selection<'_, '_> {
    /// Whether every hard expression was satisfied (by at least one node).
    pub fn is_satisfied(&self) -> bool {
        self.unsatisfied.is_none()
    }
}

/// Chooses among `nodes` those that satisfy `exprs`: first every hard expression, in order,
/// narrows the candidates (stopping at the first that leaves none); then each soft
/// expression, in order, narrows them only if some remaining candidate satisfies it, and is
/// otherwise dropped.
///
/// Swarm classic instead placed with every expression and, when that failed, retried
/// without any soft one; dropping them one at a time keeps every soft expression that can
/// be honoured, and never lets a soft one rescue a failed hard one.
///
/// ```
/// use std::collections::BTreeMap;
/// use powerstrip_placement::expr::{from_env, select, Node};
///
/// let east = BTreeMap::from([("region".to_string(), "us-east".to_string())]);
/// let eu = BTreeMap::from([("region".to_string(), "eu".to_string())]);
/// let nodes = [
///     Node { id: "1", name: "a", facts: &east, containers: &[], images: &[] },
///     Node { id: "2", name: "b", facts: &eu, containers: &[], images: &[] },
/// ];
///
/// let (exprs, _) = from_env(["constraint:region==us-*", "constraint:node==~b"])?;
/// let selection = select(&exprs, &nodes);
/// assert!(selection.is_satisfied());
/// assert_eq!(selection.nodes.iter().map(|n| n.name).collect::<Vec<_>>(), ["a"]);
/// assert_eq!(selection.dropped[0].to_string(), "constraint:node==~b");
///
/// let (exprs, _) = from_env(["constraint:region==asia", "constraint:node==~a"])?;
/// let selection = select(&exprs, &nodes);
/// assert_eq!(selection.unsatisfied.map(|e| e.text()), Some("region==asia"));
/// assert!(selection.nodes.is_empty());
/// # Ok::<(), powerstrip_placement::expr::ExprError>(())
/// ```
pub fn select<'e, 'n>(exprs: &'e [Expr], nodes: &'n [Node<'n>]) -> Selection<'e, 'n> {
    let mut candidates: Vec<&'n Node<'n>> = nodes.iter().collect();
    for expr in exprs.iter().filter(|expr| !expr.soft) {
        candidates.retain(|node| expr.matches(node));
        if candidates.is_empty() {
            return Selection {
                nodes: candidates,
                unsatisfied: Some(expr),
                dropped: Vec::new(),
            };
        }
    }
    let mut dropped = Vec::new();
    for expr in exprs.iter().filter(|expr| expr.soft) {
        let kept: Vec<&'n Node<'n>> = candidates
            .iter()
            .copied()
            .filter(|node| expr.matches(node))
            .collect();
        if kept.is_empty() {
            dropped.push(expr);
        } else {
            candidates = kept;
        }
    }
    Selection {
        nodes: candidates,
        unsatisfied: None,
        dropped,
    }
}

/// The Swarm mode placement constraint that checks `expr` by itself, if there is one:
///
/// - a hard constraint with a literal value on a fact: `KEY==VALUE` →
///   `node.labels.fact.KEY==VALUE` (facts published as node labels under
///   [`SWARM_FACT_LABEL_PREFIX`]; a missing label is the empty string there too);
/// - a hard `node==NAME` → `node.hostname==NAME` (assuming [`Node::name`] is the hostname),
///   unless NAME looks like a Swarm mode node id (25 lower-case letters and digits), which
///   `node.hostname` would not match.
///
/// Everything else gives `None`, and the caller resolves the expression to node ids with
/// [`select`]: affinities (they depend on containers and images), soft expressions (Swarm
/// mode has none), globs and regular expressions (Swarm mode compares whole strings only),
/// and values with characters Swarm mode refuses (it has no escaping; it accepts ASCII
/// letters, digits, spaces and ``: - _ . * ( ) ? + [ ] \ ^ $ | /``).
///
/// Note that Swarm mode compares values ignoring ASCII case, where this language does not:
/// `os==Ubuntu` also admits a node whose fact is `ubuntu` once translated.
///
/// ```
/// use powerstrip_placement::expr::{parse, swarm_constraint};
/// let translate = |entry| parse(entry).map(|expr| swarm_constraint(&expr));
/// assert_eq!(
///     translate("constraint:os.family!=Debian")?.as_deref(),
///     Some("node.labels.fact.os.family!=Debian"),
/// );
/// assert_eq!(translate("constraint:node==alpha")?.as_deref(), Some("node.hostname==alpha"));
/// assert_eq!(translate("constraint:os.family==Deb*")?, None);
/// assert_eq!(translate("affinity:image==redis")?, None);
/// # Ok::<(), powerstrip_placement::expr::ExprError>(())
/// ```
pub fn swarm_constraint(expr: &Expr) -> Option<String> {
    if expr.kind != Kind::Constraint || expr.soft {
        return None;
    }
    let Value::Literal(value) = &expr.value else {
        return None;
    };
    if !value.chars().all(swarm_value_char) {
        return None;
    }
    if expr.key == "node" {
        if looks_like_swarm_node_id(value) {
            return None;
        }
        return Some(format!("node.hostname{}{value}", expr.op));
    }
    Some(format!(
        "node.labels.{SWARM_FACT_LABEL_PREFIX}{}{}{value}",
        expr.key, expr.op
    ))
}

/// Whether Swarm mode accepts `c` in a constraint's value.
fn swarm_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ' ' || ":-_.*()?+[]\\^$|/".contains(c)
}

/// Whether `value` has the shape of a Swarm mode node id.
fn looks_like_swarm_node_id(value: &str) -> bool {
    value.len() == 25
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// The kind and the rest of an environment entry with an exact prefix.
fn split_prefix(entry: &str) -> Option<(Kind, &str)> {
    [Kind::Constraint, Kind::Affinity]
        .into_iter()
        .find_map(|kind| Some((kind, entry.strip_prefix(kind.prefix())?)))
}

/// Index of a kind in per-kind arrays.
fn kind_slot(kind: Kind) -> usize {
    match kind {
        Kind::Constraint => 0,
        Kind::Affinity => 1,
    }
}

/// Parses and validates `KEY OP VALUE`.
fn parse_body(kind: Kind, text: &str) -> Result<Expr, Problem> {
    if text.chars().any(char::is_control) {
        return Err(Problem::ControlCharacter);
    }
    let (key, operator, value) = split_operator(text)?;
    let (op, soft) = match operator {
        "==" => (Op::Eq, false),
        "!=" => (Op::Ne, false),
        "==~" => (Op::Eq, true),
        "!=~" => (Op::Ne, true),
        other => return Err(Problem::UnknownOperator(other.to_string())),
    };
    validate_key(key)?;
    let value = parse_value(value)?;
    Ok(Expr {
        kind,
        key: key.to_string(),
        op,
        soft,
        value,
        text: text.to_string(),
    })
}

/// Splits at the leftmost `==` or `!=`, widened to the whole run of operator characters
/// around it: (key, operator, value).
fn split_operator(text: &str) -> Result<(&str, &str, &str), Problem> {
    let at = [text.find("=="), text.find("!=")]
        .into_iter()
        .flatten()
        .min();
    let Some(at) = at else {
        // Name a near miss (`>=`, `=`, `=~`) as an unknown operator.
        return match text.find(OPERATOR_CHARS) {
            Some(start) => {
                let run = &text[start..];
                let end = run
                    .find(|c| !OPERATOR_CHARS.contains(&c))
                    .unwrap_or(run.len());
                Err(Problem::UnknownOperator(run[..end].to_string()))
            }
            None => Err(Problem::NoOperator),
        };
    };
    let start = text[..at].trim_end_matches(OPERATOR_CHARS).len();
    let after = &text[at..];
    let end = at
        + after
            .find(|c| !OPERATOR_CHARS.contains(&c))
            .unwrap_or(after.len());
    Ok((&text[..start], &text[start..end], &text[end..]))
}

/// Checks a key against the key alphabet.
fn validate_key(key: &str) -> Result<(), Problem> {
    let mut chars = key.chars();
    let Some(first) = chars.next() else {
        return Err(Problem::EmptyKey);
    };
    let valid = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Problem::BadKey(key.to_string()))
    }
}

/// How many compiled regular expressions [`compile`] keeps.
const REGEX_CACHE: usize = 256;

/// `pattern` compiled, from a cache: the same few patterns come with create after create,
/// and compiling one costs far more than evaluating it against a node. A full cache starts
/// over (patterns are the users' own; no one pattern needs to stay).
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(found) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(pattern)
    {
        return Ok(found.clone());
    }
    let compiled = Regex::new(pattern)?;
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= REGEX_CACHE {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), compiled.clone());
    Ok(compiled)
}

/// Parses a value (after the operator and its `~`).
fn parse_value(value: &str) -> Result<Value, Problem> {
    if value.is_empty() {
        return Err(Problem::EmptyValue);
    }
    if value.trim() != value {
        return Err(Problem::Whitespace);
    }
    if let Some(rest) = value.strip_prefix('/') {
        let Some(pattern) = rest.strip_suffix('/') else {
            return Err(Problem::UnclosedRegex);
        };
        if pattern.is_empty() {
            return Err(Problem::EmptyRegex);
        }
        return compile(pattern)
            .map(Value::Regex)
            .map_err(|err| Problem::InvalidRegex(err.to_string()));
    }
    if value.contains('~') {
        return Err(Problem::Tilde);
    }
    if value.contains("==") || value.contains("!=") {
        return Err(Problem::SecondOperator);
    }
    if value.contains('*') {
        Ok(Value::Glob(Glob::new(value)))
    } else {
        Ok(Value::Literal(value.to_string()))
    }
}

/// The repository of an image reference: `redis:latest` → `redis`,
/// `localhost:5000/app:1.2` → `localhost:5000/app`, `app@sha256:...` → `app`.
fn repository(reference: &str) -> &str {
    if let Some((repository, _digest)) = reference.split_once('@') {
        return repository;
    }
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => reference,
    }
}

/// An id without its `sha256:`.
fn strip_digest(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

/// How many names [`Expr::value_on`] lists before it only counts the rest.
const LISTED: usize = 10;

/// `names` joined with commas, the first [`LISTED`] of them and a count of the others.
fn listed(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(LISTED).map(String::as_str).collect();
    match names.len().saturating_sub(LISTED) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// The first 12 characters of an id, without its `sha256:`.
fn short_id(id: &str) -> &str {
    let bare = strip_digest(id);
    bare.char_indices()
        .nth(MIN_ID_PREFIX)
        .map_or(bare, |(at, _)| &bare[..at])
}

#[cfg(test)]
mod tests {
    //! Private helpers; the behaviour through the public API (and the cases ported from
    //! Swarm classic) is in `tests/expr.rs`.

    use super::*;

    #[test]
    fn long_lists_in_messages_are_cut_with_a_count() {
        let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
        assert_eq!(listed(&names[..2]), "c0, c1");
        assert_eq!(
            listed(&names),
            "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 and 2 more"
        );
    }

    /// An expression from `parse_body`, for helper tests.
    fn expr(text: &str) -> Expr {
        match parse_body(Kind::Constraint, text) {
            Ok(expr) => expr,
            Err(problem) => panic!("{text}: {problem}"),
        }
    }

    // From Swarm classic's scheduler/filter/expr_test.go, TestMatch: `==` holds when some
    // candidate matches, `!=` when none does.
    #[test]
    fn swarm_test_match() {
        let holds = |text: &str, candidates: &[&str]| {
            let e = expr(text);
            let found = e.any(candidates.iter().copied());
            match e.op {
                Op::Eq => found,
                Op::Ne => !found,
            }
        };
        assert!(holds("k==foo", &["foo"]));
        assert!(!holds("k==foo", &["bar"]));
        assert!(holds("k==foo", &["foo", "bar"]));

        assert!(!holds("k!=foo", &["foo"]));
        assert!(holds("k!=foo", &["bar"]));
        assert!(!holds("k!=foo", &["foo", "bar"]));
        assert!(!holds("k!=foo", &["bar", "foo"]));

        assert!(holds("k==f*o", &["foo"]));
        assert!(holds("k==f*o", &["fuo"]));
        assert!(holds("k==f*o", &["foo", "fuo", "bar"]));

        assert!(!holds("k!=f*o", &["foo"]));
        assert!(!holds("k!=f*o", &["fuo"]));
        assert!(!holds("k!=f*o", &["foo", "fuo", "bar"]));
    }

    #[test]
    fn split_operator_widens_to_the_whole_run() {
        assert_eq!(split_operator("a==b"), Ok(("a", "==", "b")));
        assert_eq!(split_operator("a!=~b"), Ok(("a", "!=~", "b")));
        assert_eq!(split_operator("a<==b"), Ok(("a", "<==", "b")));
        assert_eq!(split_operator("a!==b"), Ok(("a", "!==", "b")));
        assert_eq!(split_operator("a==/x==y/"), Ok(("a", "==", "/x==y/")));
        assert_eq!(
            split_operator("a>=3"),
            Err(Problem::UnknownOperator(">=".into()))
        );
        assert_eq!(split_operator("abc"), Err(Problem::NoOperator));
    }

    #[test]
    fn repository_of_references() {
        assert_eq!(repository("redis:latest"), "redis");
        assert_eq!(repository("redis"), "redis");
        assert_eq!(
            repository("localhost.localdomain:5000/samalba/hipache:latest"),
            "localhost.localdomain:5000/samalba/hipache"
        );
        assert_eq!(repository("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(
            repository("localhost:5000/foo/bar@sha256:bc88"),
            "localhost:5000/foo/bar"
        );
    }

    #[test]
    fn short_ids() {
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }
}
