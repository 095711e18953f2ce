//! The constraint and affinity language through its public API: the cases of Swarm
//! classic's own tests (`scheduler/filter/*_test.go`, `test/integration/*.bats` in
//! docker/swarm), ported as facts and expectations, then this crate's own cases.
//!
//! Swarm classic's filters answered with an error when no node was left; here that is
//! `Selection::unsatisfied`. Its tests called a filter with `soft = true` (every expression)
//! and, to see soft ones ignored, with `soft = false`; the scheduler retried the second way
//! after the first failed. Here [`select`] drops a soft expression that no node satisfies,
//! so those cases expect the retried result and the dropped expression.

use std::collections::BTreeMap;

use powerstrip_placement::expr::{
    AFFINITIES_LABEL, CONSTRAINTS_LABEL, Container, Expr, ExprError, Image, Kind, Node, Op,
    Problem, Value, from_env, from_labels, parse, select, swarm_constraint, to_labels,
};

/// A node's owned data; [`NodeData::node`] lends it as a [`Node`].
#[derive(Default)]
struct NodeData {
    id: String,
    name: String,
    facts: BTreeMap<String, String>,
    containers: Vec<Container>,
    images: Vec<Image>,
}

impl NodeData {
    fn new(id: &str, name: &str) -> Self {
        NodeData {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn fact(mut self, key: &str, value: &str) -> Self {
        self.facts.insert(key.into(), value.into());
        self
    }

    fn container(mut self, id: &str, names: &[&str], labels: &[(&str, &str)]) -> Self {
        self.containers.push(Container {
            id: id.into(),
            names: names.iter().map(|name| name.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        });
        self
    }

    fn image(mut self, id: &str, tags: &[&str]) -> Self {
        self.images.push(Image {
            id: id.into(),
            repo_tags: tags.iter().map(|tag| tag.to_string()).collect(),
        });
        self
    }

    fn node(&self) -> Node<'_> {
        Node {
            id: &self.id,
            name: &self.name,
            facts: &self.facts,
            containers: &self.containers,
            images: &self.images,
        }
    }
}

/// The outcome of placing with some expressions, by node name and expression text.
#[derive(Debug, PartialEq)]
struct Placed {
    nodes: Vec<String>,
    unsatisfied: Option<String>,
    dropped: Vec<String>,
}

/// Places with `exprs` among `data`.
fn place_exprs(data: &[NodeData], exprs: &[Expr]) -> Placed {
    let nodes: Vec<Node<'_>> = data.iter().map(NodeData::node).collect();
    let selection = select(exprs, &nodes);
    Placed {
        nodes: selection
            .nodes
            .iter()
            .map(|node| node.name.to_string())
            .collect(),
        unsatisfied: selection.unsatisfied.map(ToString::to_string),
        dropped: selection.dropped.iter().map(ToString::to_string).collect(),
    }
}

/// Places with the expressions of an environment; panics if one does not parse.
fn place(data: &[NodeData], env: &[&str]) -> Placed {
    match from_env(env) {
        Ok((exprs, _)) => place_exprs(data, &exprs),
        Err(err) => panic!("{env:?}: {err}"),
    }
}

/// The names of the nodes chosen by `env`, which must all be hard-satisfied.
fn chosen(data: &[NodeData], env: &[&str]) -> Vec<String> {
    let placed = place(data, env);
    assert_eq!(placed.unsatisfied, None, "{env:?}");
    placed.nodes
}

/// Asserts that `env` leaves no node, naming its expression `unsatisfied`.
fn refused(data: &[NodeData], env: &[&str], unsatisfied: &str) {
    let placed = place(data, env);
    assert!(placed.nodes.is_empty(), "{env:?}: {placed:?}");
    assert_eq!(placed.unsatisfied.as_deref(), Some(unsatisfied), "{env:?}");
}

/// The problem with an invalid entry.
fn problem(entry: &str) -> Problem {
    match parse(entry) {
        Ok(expr) => panic!("{entry} parsed as {expr:?}"),
        Err(err) => match err.problem() {
            Some(problem) => problem.clone(),
            None => panic!("{entry}: {err}"),
        },
    }
}

/// Parses an entry that must be valid.
fn ok(entry: &str) -> Expr {
    match parse(entry) {
        Ok(expr) => expr,
        Err(err) => panic!("{err}"),
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Ported from Swarm classic: scheduler/filter/expr_test.go, TestParseExprs (11 cases).
// TestMatch is ported in src/expr.rs's unit tests (it needs the private candidate matcher).

#[test]
fn swarm_parse_exprs() {
    // A key cannot start with a digit (this entry has no operator either; both are errors).
    assert!(parse("constraint:1node").is_err());
    assert_eq!(
        problem("constraint:1node==x"),
        Problem::BadKey("1node".into())
    );
    // No space in a key.
    assert_eq!(
        problem("constraint:node ==node1"),
        Problem::BadKey("node ".into())
    );
    // No `*` in a key.
    assert_eq!(
        problem("constraint:no*de==node1"),
        Problem::BadKey("no*de".into())
    );
    // No `$` in a key.
    assert_eq!(
        problem("constraint:no$de==node1"),
        Problem::BadKey("no$de".into())
    );
    // Capitals in a key are allowed (and kept: keys are case-sensitive).
    let expr = ok("constraint:NoDe==node1");
    assert_eq!(
        (expr.key(), expr.value()),
        ("NoDe", &Value::Literal("node1".into()))
    );
    // A dot in a key.
    let expr = ok("constraint:no.de==node1");
    assert_eq!(
        (expr.key(), expr.value()),
        ("no.de", &Value::Literal("node1".into()))
    );
    // A leading underscore.
    let expr = ok("constraint:_node==_node1");
    assert_eq!(
        (expr.key(), expr.value()),
        ("_node", &Value::Literal("_node1".into()))
    );
    // A glob value.
    let expr = ok("constraint:node==*node*");
    assert_eq!(expr.key(), "node");
    assert!(matches!(expr.value(), Value::Glob(glob) if glob.as_str() == "*node*"));
    // A regular expression value.
    let expr = ok("constraint:node==/(?i)^[a-b]+c*(n|b)$/");
    assert_eq!(expr.key(), "node");
    assert_eq!(expr.value().to_string(), "/(?i)^[a-b]+c*(n|b)$/");
    assert!(matches!(expr.value(), Value::Regex(_)));
    // A space inside a value.
    let expr = ok("constraint:node==node 1");
    assert_eq!(expr.value(), &Value::Literal("node 1".into()));
    // No empty value.
    assert_eq!(problem("constraint:node=="), Problem::EmptyValue);
}

// ---------------------------------------------------------------------------------------
// Ported from Swarm classic: scheduler/filter/constraint_test.go (31 cases).

/// Swarm classic's `testFixtures()`: three labelled nodes and a bare one.
fn constraint_fixtures() -> Vec<NodeData> {
    vec![
        NodeData::new("node-0-id", "node-0-name")
            .fact("name", "node0")
            .fact("group", "1")
            .fact("region", "us-west"),
        NodeData::new("node-1-id", "node-1-name")
            .fact("name", "node1")
            .fact("group", "1")
            .fact("region", "us-east"),
        NodeData::new("node-2-id", "node-2-name")
            .fact("name", "node2")
            .fact("group", "2")
            .fact("region", "eu"),
        NodeData::new("node-3-id", "node-3-name"),
    ]
}

// From TestConstraintFilter.
#[test]
fn swarm_constraint_filter() {
    let nodes = constraint_fixtures();
    // No constraints: every node.
    assert_eq!(
        chosen(&nodes, &[]),
        names(&["node-0-name", "node-1-name", "node-2-name", "node-3-name"])
    );
    // A constraint nobody fulfils.
    refused(
        &nodes,
        &["constraint:does_not_exist==true"],
        "constraint:does_not_exist==true",
    );
    // Fulfilled by one node.
    assert_eq!(
        chosen(&nodes, &["constraint:name==node1"]),
        names(&["node-1-name"])
    );
    // Fulfilled by a subset.
    assert_eq!(
        chosen(&nodes, &["constraint:group==1"]),
        names(&["node-0-name", "node-1-name"])
    );
    // Pinning by node id.
    assert_eq!(
        chosen(&nodes, &["constraint:node==node-2-id"]),
        names(&["node-2-name"])
    );
    // Pinning by node name.
    assert_eq!(
        chosen(&nodes, &["constraint:node==node-1-name"]),
        names(&["node-1-name"])
    );
    // Constraints are ANDed.
    assert_eq!(
        chosen(&nodes, &["constraint:name==node0", "constraint:group==1"]),
        names(&["node-0-name"])
    );
    // A literal matches whole values only.
    refused(&nodes, &["constraint:region==us"], "constraint:region==us");
    // Globs.
    assert_eq!(
        chosen(&nodes, &["constraint:region==us*"]),
        names(&["node-0-name", "node-1-name"])
    );
    assert_eq!(
        chosen(&nodes, &["constraint:region==*us*"]),
        names(&["node-0-name", "node-1-name"])
    );
}

// From TestConstraintNotExpr.
#[test]
fn swarm_constraint_not_expr() {
    let nodes = constraint_fixtures();
    assert_eq!(chosen(&nodes, &["constraint:name!=node0"]).len(), 3);
    // A value nobody has: every node, including the one without the fact.
    assert_eq!(
        chosen(&nodes, &["constraint:name!=does_not_exist"]).len(),
        4
    );
    // Names not starting with n: only the node without a name fact.
    assert_eq!(
        chosen(&nodes, &["constraint:name!=n*"]),
        names(&["node-3-name"])
    );
    assert_eq!(
        chosen(&nodes, &["constraint:region!=us*"]),
        names(&["node-2-name", "node-3-name"])
    );
}

// From TestConstraintRegExp.
#[test]
fn swarm_constraint_regexp() {
    let nodes = constraint_fixtures();
    assert_eq!(chosen(&nodes, &[r"constraint:name==/node\d/"]).len(), 3);
    assert_eq!(
        chosen(&nodes, &["constraint:name==/node[12]/"]),
        names(&["node-1-name", "node-2-name"])
    );
    assert_eq!(
        chosen(&nodes, &["constraint:name!=/node[12]/"]),
        names(&["node-0-name", "node-3-name"])
    );
    // `node` with `!=` and a regular expression, against the ids.
    assert_eq!(
        chosen(&nodes, &["constraint:node!=/node-[01]-id/"]),
        names(&["node-2-name", "node-3-name"])
    );
}

// From TestFilterRegExpCaseInsensitive.
#[test]
fn swarm_filter_regexp_case_insensitive() {
    let mut nodes = constraint_fixtures();
    nodes[3] = NodeData::new("node-3-id", "node-3-name")
        .fact("name", "aBcDeF")
        .fact("group", "2")
        .fact("region", "eu");
    // Case-sensitive by default.
    refused(
        &nodes,
        &["constraint:name==/abcdef/"],
        "constraint:name==/abcdef/",
    );
    // `(?i)` ignores case.
    assert_eq!(
        chosen(&nodes, &["constraint:name==/(?i)abcdef/"]),
        names(&["node-3-name"])
    );
    // `!=` with `(?i)`.
    assert_eq!(chosen(&nodes, &["constraint:name!=/(?i)abc*/"]).len(), 3);
}

// From TestFilterEquals.
#[test]
fn swarm_filter_equals() {
    let nodes = constraint_fixtures();
    assert_eq!(
        chosen(&nodes, &["constraint:name==node0"]),
        names(&["node-0-name"])
    );
    assert_eq!(chosen(&nodes, &["constraint:region==us*"]).len(), 2);
    assert_eq!(
        chosen(&nodes, &["constraint:node==node-1-name"]),
        names(&["node-1-name"])
    );
}

// From TestUnsupportedOperators.
#[test]
fn swarm_unsupported_operators() {
    assert_eq!(
        problem("constraint:name=node0"),
        Problem::UnknownOperator("=".into())
    );
    assert_eq!(
        problem("constraint:name=!node0"),
        Problem::UnknownOperator("=!".into())
    );
}

// From TestFilterSoftConstraint.
#[test]
fn swarm_filter_soft_constraint() {
    let nodes = constraint_fixtures();
    assert_eq!(
        chosen(&nodes, &["constraint:node==~node-1-name"]),
        names(&["node-1-name"])
    );
    assert_eq!(chosen(&nodes, &["constraint:name!=~/(?i)abc*/"]).len(), 4);
    assert_eq!(
        chosen(&nodes, &["constraint:region!=~us*"]),
        names(&["node-2-name", "node-3-name"])
    );
    assert_eq!(chosen(&nodes, &["constraint:region!=~can*"]).len(), 4);
    // A `~` inside the value is refused.
    assert_eq!(problem("constraint:region==~us~"), Problem::Tilde);
}

// ---------------------------------------------------------------------------------------
// Ported from Swarm classic: scheduler/filter/affinity_test.go (30 cases).

/// The nodes of TestAffinityFilter.
fn affinity_fixtures() -> Vec<NodeData> {
    vec![
        NodeData::new("node-0-id", "node-0-name")
            .container("container-n0-0-id", &["/container-n0-0-name"], &[])
            .container("container-n0-1-id", &["/container-n0-1-name"], &[])
            .image("image-0-id", &["image-0:tag1", "image-0:tag2"]),
        NodeData::new("node-1-id", "node-1-name")
            .container("container-n1-0-id", &["/container-n1-0-name"], &[])
            .container("container-n1-1-id", &["/container-n1-1-name"], &[])
            .image(
                "image-1-id",
                &["image-1:tag1", "image-0:tag3", "image-1:tag2"],
            ),
        NodeData::new("node-2-id", "node-2-name"),
    ]
}

// From TestAffinityFilter.
#[test]
fn swarm_affinity_filter() {
    let nodes = affinity_fixtures();
    assert_eq!(chosen(&nodes, &[]).len(), 3);
    refused(
        &nodes,
        &["affinity:container==does_not_exist"],
        "affinity:container==does_not_exist",
    );
    // By name glob.
    assert_eq!(
        chosen(&nodes, &["affinity:container==container-n0*"]),
        names(&["node-0-name"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:container==container-*"]),
        names(&["node-0-name", "node-1-name"])
    );
    // By id.
    assert_eq!(
        chosen(&nodes, &["affinity:container==container-n0-0-id"]),
        names(&["node-0-name"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:container!=container-n0-0-id"]),
        names(&["node-1-name", "node-2-name"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:container!=container-n0-1-id"]),
        names(&["node-1-name", "node-2-name"])
    );
    // By name.
    assert_eq!(
        chosen(&nodes, &["affinity:container==container-n1-0-name"]),
        names(&["node-1-name"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:container!=container-n1-0-name"]),
        names(&["node-0-name", "node-2-name"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:container!=container-n1-1-name"]),
        names(&["node-0-name", "node-2-name"])
    );
    // Conflicting affinities.
    refused(
        &nodes,
        &[
            "affinity:container!=container-n1-1-name",
            "affinity:container==container-n1-1-name",
        ],
        "affinity:container==container-n1-1-name",
    );
    // Images by id.
    assert_eq!(
        chosen(&nodes, &["affinity:image==image-0-id"]),
        names(&["node-0-name"])
    );
    // Images by name and tag.
    assert_eq!(
        chosen(&nodes, &["affinity:image==image-0:tag3"]),
        names(&["node-1-name"])
    );
    assert_eq!(chosen(&nodes, &["affinity:image!=image-0:tag3"]).len(), 2);
    // Images by repository without a tag.
    assert_eq!(
        chosen(&nodes, &["affinity:image==image-1"]),
        names(&["node-1-name"])
    );
    assert_eq!(chosen(&nodes, &["affinity:image!=image-1"]).len(), 2);
    // Chained.
    assert_eq!(
        chosen(
            &nodes,
            &[
                "affinity:container!=container-n0-1-id",
                "affinity:container!=container-n1-1-id",
            ]
        ),
        names(&["node-2-name"])
    );
    refused(
        &nodes,
        &[
            "affinity:container==container-n0-1-id",
            "affinity:container==container-n1-1-id",
        ],
        "affinity:container==container-n1-1-id",
    );
    // Soft affinities.
    assert_eq!(chosen(&nodes, &["affinity:image==~image-0:tag3"]).len(), 1);
    assert_eq!(problem("affinity:image==~ima~ge-0:tag3"), Problem::Tilde);
    // Swarm: an error with soft expressions, all three nodes without them; here: dropped.
    assert_eq!(
        place(&nodes, &["affinity:image==~image-1:tag3"]),
        Placed {
            nodes: names(&["node-0-name", "node-1-name", "node-2-name"]),
            unsatisfied: None,
            dropped: names(&["affinity:image==~image-1:tag3"]),
        }
    );
    assert_eq!(chosen(&nodes, &["affinity:image==~image-*"]).len(), 2);
    assert_eq!(
        chosen(&nodes, &["affinity:image!=~image-*"]),
        names(&["node-2-name"])
    );
    assert_eq!(chosen(&nodes, &[r"affinity:image==~/image-\d*/"]).len(), 2);
    // `=` and `=!` are not operators (any more).
    assert_eq!(
        problem("affinity:image=image-0:tag3"),
        Problem::UnknownOperator("=".into())
    );
    assert_eq!(
        problem("affinity:image=!image-0:tag3"),
        Problem::UnknownOperator("=!".into())
    );
}

// From TestAffinityFilterLabels: image affinities from the environment and from the
// `com.docker.swarm.affinities` label.
#[test]
fn swarm_affinity_filter_labels() {
    let nodes = vec![
        NodeData::new("node-0-id", "node-0-name")
            .container("container-n0-id", &["/container-n0-name"], &[])
            .image("image-0-id", &["image-0:tag0"]),
        NodeData::new("node-1-id", "node-1-name")
            .container("container-n1-id", &["/container-n1-name"], &[])
            .image("image-1-id", &["image-1:tag1"]),
    ];
    assert_eq!(
        chosen(&nodes, &["affinity:image==image-1"]),
        names(&["node-1-name"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:image!=image-1"]),
        names(&["node-0-name"])
    );
    let from_label = |json: &str| match from_labels([(AFFINITIES_LABEL, json)]) {
        Ok(exprs) => place_exprs(&nodes, &exprs).nodes,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(from_label(r#"["image==image-1"]"#), names(&["node-1-name"]));
    assert_eq!(from_label(r#"["image!=image-1"]"#), names(&["node-0-name"]));
}

// ---------------------------------------------------------------------------------------
// Ported from Swarm classic's integration tests: test/integration/affinities.bats and
// constraints.bats (6 cases): label affinities, images from a registry with a port, and
// constraints in the `com.docker.swarm.constraints` label.

#[test]
fn swarm_integration_affinities_and_constraints() {
    let nodes = vec![
        NodeData::new("0", "node-0")
            .fact("foo", "a")
            .container("c0", &["/c0"], &[]),
        NodeData::new("1", "node-1")
            .fact("foo", "b")
            .container("c1", &["/c1"], &[("test.label", "true")])
            .image("sha256:1111", &["localhost:5000/test:latest"]),
    ];
    // "label affinity"
    assert_eq!(
        chosen(&nodes, &["affinity:test.label==true"]),
        names(&["node-1"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:test.label!=true"]),
        names(&["node-0"])
    );
    // "image affinity" with a registry port: the repository matches without its tag.
    assert_eq!(
        chosen(&nodes, &["affinity:image==localhost:5000/test"]),
        names(&["node-1"])
    );
    // "label constraints", from the environment and from the label.
    assert_eq!(chosen(&nodes, &["constraint:foo==a"]), names(&["node-0"]));
    let exprs = from_labels([(CONSTRAINTS_LABEL, r#"["foo==b"]"#)]).expect("valid label");
    assert_eq!(place_exprs(&nodes, &exprs).nodes, names(&["node-1"]));
    let exprs = from_labels([(CONSTRAINTS_LABEL, r#"["node==node-1"]"#)]).expect("valid label");
    assert_eq!(place_exprs(&nodes, &exprs).nodes, names(&["node-1"]));
}

// ---------------------------------------------------------------------------------------
// This crate's own cases.

#[test]
fn operators() {
    let nodes = vec![
        NodeData::new("1", "a").fact("disk", "ssd"),
        NodeData::new("2", "b").fact("disk", "hdd"),
    ];
    let e = ok("constraint:disk==ssd");
    assert_eq!((e.op(), e.is_soft()), (Op::Eq, false));
    assert_eq!(chosen(&nodes, &["constraint:disk==ssd"]), names(&["a"]));
    let e = ok("constraint:disk!=ssd");
    assert_eq!((e.op(), e.is_soft()), (Op::Ne, false));
    assert_eq!(chosen(&nodes, &["constraint:disk!=ssd"]), names(&["b"]));
    let e = ok("constraint:disk==~ssd");
    assert_eq!((e.op(), e.is_soft()), (Op::Eq, true));
    assert_eq!(chosen(&nodes, &["constraint:disk==~ssd"]), names(&["a"]));
    let e = ok("constraint:disk!=~ssd");
    assert_eq!((e.op(), e.is_soft()), (Op::Ne, true));
    assert_eq!(chosen(&nodes, &["constraint:disk!=~ssd"]), names(&["b"]));
}

#[test]
fn globs_are_anchored_and_only_star_is_special() {
    let nodes = vec![
        NodeData::new("1", "a").fact("kernel", "3.10.0"),
        NodeData::new("2", "b").fact("kernel", "3x10y0"),
        NodeData::new("3", "c").fact("kernel", "13.1"),
        NodeData::new("4", "d").fact("kernel", "node-[12]"),
    ];
    assert_eq!(chosen(&nodes, &["constraint:kernel==3.*"]), names(&["a"]));
    assert_eq!(chosen(&nodes, &["constraint:kernel==*13.*"]), names(&["c"]));
    assert_eq!(
        chosen(&nodes, &["constraint:kernel==3*"]),
        names(&["a", "b"])
    );
    assert_eq!(chosen(&nodes, &["constraint:kernel==*"]).len(), 4);
    // Swarm classic made these regular expressions (`.` any character, `[12]` a class).
    assert_eq!(
        chosen(&nodes, &["constraint:kernel==3.10.0"]),
        names(&["a"])
    );
    assert_eq!(
        chosen(&nodes, &["constraint:kernel==node-[12]"]),
        names(&["d"])
    );
    refused(
        &nodes,
        &["constraint:kernel==node-[12]*x"],
        "constraint:kernel==node-[12]*x",
    );
}

#[test]
fn regular_expressions_are_searched_unanchored() {
    let nodes = vec![
        NodeData::new("1", "a").fact("rack", "r15"),
        NodeData::new("2", "b").fact("rack", "r31"),
        NodeData::new("3", "c").fact("os", "Ubuntu 22.04"),
    ];
    assert_eq!(
        chosen(&nodes, &["constraint:rack==/[0-2][0-5]/"]),
        names(&["a"])
    );
    assert_eq!(
        chosen(&nodes, &["constraint:rack==/^r/"]),
        names(&["a", "b"])
    );
    assert_eq!(
        chosen(&nodes, &["constraint:os==/(?i)ubuntu/"]),
        names(&["c"])
    );
    refused(
        &nodes,
        &["constraint:os==/ubuntu/"],
        "constraint:os==/ubuntu/",
    );
    // Characters Swarm classic refused are fine in a regular expression.
    assert_eq!(chosen(&nodes, &["constraint:rack==/r[0-9]{2}/"]).len(), 2);
    // A regular expression with `==`, `!=` or `~` in it.
    assert!(parse("constraint:x==/a==b|c!=d|~/").is_ok());
}

#[test]
fn keys_and_values_are_case_sensitive() {
    let nodes = vec![NodeData::new("1", "a").fact("Region", "EU")];
    refused(&nodes, &["constraint:region==EU"], "constraint:region==EU");
    refused(&nodes, &["constraint:Region==eu"], "constraint:Region==eu");
    refused(&nodes, &["constraint:Region==e*"], "constraint:Region==e*");
    assert_eq!(chosen(&nodes, &["constraint:Region==EU"]).len(), 1);
}

#[test]
fn a_missing_fact_is_the_empty_string() {
    let nodes = vec![
        NodeData::new("1", "a"),
        NodeData::new("2", "b").fact("gpu", ""),
        NodeData::new("3", "c").fact("gpu", "nvidia"),
    ];
    assert_eq!(
        chosen(&nodes, &["constraint:gpu!=nvidia"]),
        names(&["a", "b"])
    );
    assert_eq!(chosen(&nodes, &["constraint:gpu==*"]).len(), 3);
    assert_eq!(chosen(&nodes, &["constraint:gpu!=/./"]), names(&["a", "b"]));
    let node = &nodes[0];
    assert_eq!(ok("constraint:gpu==x").value_on(&node.node()), "(none)");
    assert_eq!(
        ok("constraint:gpu==x").value_on(&nodes[1].node()),
        "(empty)"
    );
    assert_eq!(ok("constraint:gpu==x").value_on(&nodes[2].node()), "nvidia");
}

#[test]
fn node_by_name_or_id() {
    let nodes = vec![
        // A fact called `node` does not count: `node` is the node itself.
        NodeData::new("3f9a", "alpha").fact("node", "beta"),
        NodeData::new("77c1", "beta"),
    ];
    assert_eq!(
        chosen(&nodes, &["constraint:node==alpha"]),
        names(&["alpha"])
    );
    assert_eq!(chosen(&nodes, &["constraint:node==77c1"]), names(&["beta"]));
    assert_eq!(chosen(&nodes, &["constraint:node!=3f9a"]), names(&["beta"]));
    assert_eq!(
        chosen(&nodes, &["constraint:node!=beta"]),
        names(&["alpha"])
    );
    assert_eq!(
        ok("constraint:node==x").value_on(&nodes[0].node()),
        "alpha (id 3f9a)"
    );
}

#[test]
fn soft_never_rescues_a_failed_hard_expression() {
    let nodes = vec![
        NodeData::new("1", "a")
            .fact("disk", "ssd")
            .fact("zone", "1"),
        NodeData::new("2", "b")
            .fact("disk", "hdd")
            .fact("zone", "2"),
    ];
    // The hard one fails; the soft one, though satisfiable, does not help.
    let placed = place(&nodes, &["constraint:disk==~ssd", "constraint:disk==nvme"]);
    assert_eq!(
        placed,
        Placed {
            nodes: vec![],
            unsatisfied: Some("constraint:disk==nvme".into()),
            dropped: vec![],
        }
    );
    // Soft ones are checked after every hard one, whatever the order they came in.
    assert_eq!(
        place(&nodes, &["constraint:zone==~1", "constraint:disk==hdd"]),
        Placed {
            nodes: names(&["b"]),
            unsatisfied: None,
            dropped: names(&["constraint:zone==~1"]),
        }
    );
    // Each soft one is kept if it can be: here the first narrows to `a`, the second is
    // then unsatisfiable and dropped, the third still holds.
    assert_eq!(
        place(
            &nodes,
            &[
                "constraint:disk==~ssd",
                "constraint:zone==~2",
                "constraint:zone!=~3"
            ]
        ),
        Placed {
            nodes: names(&["a"]),
            unsatisfied: None,
            dropped: names(&["constraint:zone==~2"]),
        }
    );
    // Without any node, hard expressions are unsatisfied and soft ones dropped.
    assert_eq!(
        place(&[], &["constraint:zone==~1"]),
        Placed {
            nodes: vec![],
            unsatisfied: None,
            dropped: names(&["constraint:zone==~1"]),
        }
    );
    assert_eq!(
        place(&[], &["constraint:zone==1"]).unsatisfied.as_deref(),
        Some("constraint:zone==1")
    );
}

#[test]
fn container_affinity() {
    let id = "87c4376856a8e3d1f2b0a9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8";
    let nodes = vec![
        NodeData::new("1", "a").container(id, &["/frontend", "/web/front"], &[]),
        NodeData::new("2", "b").container("0123456789abcdef0123", &["backend"], &[]),
        NodeData::new("3", "c"),
    ];
    assert_eq!(
        chosen(&nodes, &["affinity:container==frontend"]),
        names(&["a"])
    );
    // A name given without its `/` by the caller counts too.
    assert_eq!(
        chosen(&nodes, &["affinity:container==backend"]),
        names(&["b"])
    );
    // Link aliases (`/web/front`) are not names.
    refused(
        &nodes,
        &["affinity:container==front"],
        "affinity:container==front",
    );
    refused(
        &nodes,
        &["affinity:container==web/front"],
        "affinity:container==web/front",
    );
    // The whole id, and an abbreviation of 12 or more hexadecimal digits.
    assert_eq!(
        chosen(&nodes, &[format!("affinity:container=={id}").as_str()]),
        names(&["a"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:container==87c4376856a8"]),
        names(&["a"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:container!=87c4376856a8"]),
        names(&["b", "c"])
    );
    refused(
        &nodes,
        &["affinity:container==87c4376856a"],
        "affinity:container==87c4376856a",
    );
    // A node without containers satisfies every `!=` and no `==`.
    assert_eq!(chosen(&nodes, &["affinity:container!=*"]), names(&["c"]));
    assert_eq!(
        ok("affinity:container==x").value_on(&nodes[0].node()),
        "containers: frontend"
    );
    assert_eq!(
        ok("affinity:container==x").value_on(&nodes[2].node()),
        "no containers"
    );
}

#[test]
fn image_affinity() {
    let id = "sha256:06a1f75304ba9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c";
    let nodes = vec![
        NodeData::new("1", "a").image(id, &["redis:latest", "redis:7"]),
        NodeData::new("2", "b")
            .image("sha256:ffff", &["registry.example.com:5000/team/app:1.2"])
            .image("sha256:eeee", &["<none>:<none>"]),
        NodeData::new("3", "c"),
    ];
    // The repository without its tag, and with each tag.
    assert_eq!(chosen(&nodes, &["affinity:image==redis"]), names(&["a"]));
    assert_eq!(chosen(&nodes, &["affinity:image==redis:7"]), names(&["a"]));
    refused(
        &nodes,
        &["affinity:image==redis:6"],
        "affinity:image==redis:6",
    );
    assert_eq!(
        chosen(
            &nodes,
            &["affinity:image==registry.example.com:5000/team/app"]
        ),
        names(&["b"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:image!=redis"]),
        names(&["b", "c"])
    );
    // By id: whole, without `sha256:`, or abbreviated.
    assert_eq!(
        chosen(&nodes, &[format!("affinity:image=={id}").as_str()]),
        names(&["a"])
    );
    assert_eq!(
        chosen(&nodes, &[format!("affinity:image=={}", &id[7..]).as_str()]),
        names(&["a"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:image==06a1f75304ba"]),
        names(&["a"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:image==sha256:06a1f75304ba"]),
        names(&["a"])
    );
    assert_eq!(chosen(&nodes, &["affinity:image==06a1*"]), names(&["a"]));
    // `<none>` is not a name.
    refused(
        &nodes,
        &["affinity:image==/none/"],
        "affinity:image==/none/",
    );
    assert_eq!(
        ok("affinity:image==x").value_on(&nodes[1].node()),
        "images: registry.example.com:5000/team/app:1.2, eeee"
    );
    assert_eq!(
        ok("affinity:image==x").value_on(&nodes[2].node()),
        "no images"
    );
}

#[test]
fn label_affinity() {
    let nodes = vec![
        NodeData::new("1", "a")
            .container("c1", &["/web"], &[("com.example.type", "frontend")])
            .container("c2", &["/tool"], &[]),
        NodeData::new("2", "b").container("c3", &["/db"], &[("com.example.type", "backend")]),
        NodeData::new("3", "c"),
    ];
    assert_eq!(
        chosen(&nodes, &["affinity:com.example.type==frontend"]),
        names(&["a"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:com.example.type!=frontend"]),
        names(&["b", "c"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:com.example.type==/end$/"]),
        names(&["a", "b"])
    );
    // A container without the label has the empty string for it, as a missing fact does:
    // `*` matches it, so node `a` (with `tool`) passes and `b` does not.
    assert_eq!(
        chosen(&nodes, &["affinity:com.example.type==*"]),
        names(&["a", "b"])
    );
    assert_eq!(
        chosen(&nodes, &["affinity:com.example.type!=/^$/"]),
        names(&["b", "c"])
    );
    assert_eq!(
        ok("affinity:com.example.type==x").value_on(&nodes[0].node()),
        "containers with com.example.type: web=frontend"
    );
    assert_eq!(
        ok("affinity:com.example.type==x").value_on(&nodes[2].node()),
        "no container with label com.example.type"
    );
}

#[test]
fn env_takes_only_exact_lower_case_prefixes() {
    let env = [
        "PATH=/usr/bin",
        "constraint:region==eu",
        "CONSTRAINT:x==y",
        "Affinity:image==redis",
        "affinity:image==redis",
        "constraint",
        "constraints:x==y",
        "reschedule:on-node-failure",
        "X=constraint:a==b",
    ];
    let (exprs, rest) = from_env(env).expect("valid");
    assert_eq!(
        exprs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["constraint:region==eu", "affinity:image==redis"]
    );
    assert_eq!(
        rest,
        [
            "PATH=/usr/bin",
            "CONSTRAINT:x==y",
            "Affinity:image==redis",
            "constraint",
            "constraints:x==y",
            "reschedule:on-node-failure",
            "X=constraint:a==b",
        ]
    );
    assert_eq!(exprs[0].kind(), Kind::Constraint);
    assert_eq!(exprs[1].kind(), Kind::Affinity);
    assert_eq!(exprs[0].text(), "region==eu");
    // Owned strings work as well.
    let owned = vec!["affinity:container==db".to_string()];
    assert_eq!(from_env(&owned).expect("valid").0.len(), 1);
    // The first invalid entry is an error naming it.
    let err = from_env(["A=b", "constraint:foo>=3", "constraint:bar"]).unwrap_err();
    assert_eq!(
        err,
        ExprError::Invalid {
            expr: "constraint:foo>=3".into(),
            problem: Problem::UnknownOperator(">=".into()),
        }
    );
    // `parse` wants a prefix.
    assert!(matches!(
        parse("CONSTRAINT:x==y"),
        Err(ExprError::NotAnExpression { entry }) if entry == "CONSTRAINT:x==y"
    ));
}

#[test]
fn labels() {
    let labels = BTreeMap::from([
        (
            AFFINITIES_LABEL.to_string(),
            r#"["container==db","image==~redis"]"#.to_string(),
        ),
        (
            CONSTRAINTS_LABEL.to_string(),
            r#"["architecture==x86_64"]"#.to_string(),
        ),
        ("com.example.other".to_string(), "not json".to_string()),
    ]);
    let exprs = from_labels(&labels).expect("valid");
    assert_eq!(
        exprs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "constraint:architecture==x86_64",
            "affinity:container==db",
            "affinity:image==~redis"
        ]
    );
    // Recorded back as read.
    assert_eq!(
        to_labels(&exprs),
        [
            (
                CONSTRAINTS_LABEL.to_string(),
                r#"["architecture==x86_64"]"#.to_string()
            ),
            (
                AFFINITIES_LABEL.to_string(),
                r#"["container==db","image==~redis"]"#.to_string()
            ),
        ]
    );
    assert_eq!(from_labels(to_labels(&exprs)).expect("valid"), exprs);
    // No expressions, no labels; an empty array is fine.
    assert!(to_labels(&[]).is_empty());
    assert!(
        from_labels([(CONSTRAINTS_LABEL, "[]")])
            .expect("valid")
            .is_empty()
    );
    // JSON escapes in the label.
    let exprs = from_labels([(CONSTRAINTS_LABEL, r#"["name==/\\d\"/"]"#)]).expect("valid");
    assert_eq!(exprs[0].value().to_string(), r#"/\d"/"#);
    assert_eq!(from_labels(to_labels(&exprs)).expect("valid"), exprs);
    // The label names are case-sensitive.
    assert!(
        from_labels([("com.docker.swarm.Constraints", "junk")])
            .expect("ignored")
            .is_empty()
    );
}

#[test]
fn bad_labels_are_errors() {
    for json in [
        "not json",
        "null",
        r#"{"a":"b"}"#,
        r#"["a==b", 3]"#,
        r#""a==b""#,
    ] {
        let err = from_labels([(CONSTRAINTS_LABEL, json)]).unwrap_err();
        assert!(
            matches!(
                err,
                ExprError::BadLabel {
                    label: CONSTRAINTS_LABEL,
                    ..
                }
            ),
            "{json}: {err:?}"
        );
    }
    let err = from_labels([(AFFINITIES_LABEL, r#"["image==redis", "image>=3"]"#)]).unwrap_err();
    assert_eq!(
        err,
        ExprError::InvalidInLabel {
            label: AFFINITIES_LABEL,
            expr: "image>=3".into(),
            problem: Problem::UnknownOperator(">=".into()),
        }
    );
    assert_eq!(
        err.to_string(),
        "invalid placement expression `image>=3` in label `com.docker.swarm.affinities`: \
         `>=` is not an operator: use ==, != or their soft variants ==~ and !=~"
    );
    // The prefix does not belong in the label.
    assert_eq!(
        from_labels([(CONSTRAINTS_LABEL, r#"["constraint:a==b"]"#)])
            .unwrap_err()
            .problem(),
        Some(&Problem::BadKey("constraint:a".into()))
    );
}

#[test]
fn strict_errors() {
    // Regular expressions.
    assert_eq!(problem("constraint:name==/abc"), Problem::UnclosedRegex);
    assert_eq!(problem("constraint:name==/"), Problem::UnclosedRegex);
    assert_eq!(problem("constraint:name==//"), Problem::EmptyRegex);
    assert!(matches!(
        problem("constraint:name==/[/"),
        Problem::InvalidRegex(_)
    ));
    assert!(matches!(
        problem("constraint:name==/(?P<x/"),
        Problem::InvalidRegex(_)
    ));
    // Operators.
    assert_eq!(problem("constraint:foo"), Problem::NoOperator);
    assert_eq!(problem("constraint:"), Problem::NoOperator);
    assert_eq!(
        problem("constraint:foo>=3"),
        Problem::UnknownOperator(">=".into())
    );
    assert_eq!(
        problem("constraint:foo<=3"),
        Problem::UnknownOperator("<=".into())
    );
    assert_eq!(
        problem("constraint:foo=~3"),
        Problem::UnknownOperator("=~".into())
    );
    assert_eq!(
        problem("constraint:foo===3"),
        Problem::UnknownOperator("===".into())
    );
    assert_eq!(
        problem("constraint:foo!==3"),
        Problem::UnknownOperator("!==".into())
    );
    assert_eq!(
        problem("constraint:foo==!3"),
        Problem::UnknownOperator("==!".into())
    );
    assert_eq!(
        problem("constraint:foo==~~3"),
        Problem::UnknownOperator("==~~".into())
    );
    assert_eq!(
        problem("constraint:foo~==3"),
        Problem::UnknownOperator("~==".into())
    );
    assert_eq!(problem("constraint:foo==3==4"), Problem::SecondOperator);
    assert_eq!(problem("constraint:foo!=3==4"), Problem::SecondOperator);
    // Keys.
    assert_eq!(problem("constraint:==x"), Problem::EmptyKey);
    assert_eq!(problem("affinity:!=~x"), Problem::EmptyKey);
    assert_eq!(problem("constraint:a/b==x"), Problem::BadKey("a/b".into()));
    assert_eq!(problem("constraint:é==x"), Problem::BadKey("é".into()));
    // Values.
    assert_eq!(problem("constraint:foo==~"), Problem::EmptyValue);
    assert_eq!(problem("constraint:foo== x"), Problem::Whitespace);
    assert_eq!(problem("constraint:foo==x "), Problem::Whitespace);
    assert_eq!(problem("constraint:foo==a\tb"), Problem::ControlCharacter);
    assert_eq!(problem("constraint:foo==a~b"), Problem::Tilde);
    // Messages name the expression as written.
    let message = parse("constraint:name==/[/").unwrap_err().to_string();
    assert!(
        message.starts_with(
            "invalid placement expression `constraint:name==/[/`: invalid regular expression"
        ),
        "{message}"
    );
    assert_eq!(
        parse("constraint:==x").unwrap_err().to_string(),
        "invalid placement expression `constraint:==x`: the key before the operator is empty"
    );
}

#[test]
fn accepted_beyond_swarm_classic() {
    // One-character keys; any printable value.
    assert_eq!(ok("constraint:x==y").key(), "x");
    assert_eq!(
        ok("constraint:cpu==Intel(R) Xeon(R) @ 2.60GHz").value(),
        &Value::Literal("Intel(R) Xeon(R) @ 2.60GHz".into())
    );
    assert_eq!(
        ok("constraint:city==Zürich").value(),
        &Value::Literal("Zürich".into())
    );
    // A `/` inside or at the end of a literal.
    assert_eq!(
        ok("affinity:image==library/redis").value(),
        &Value::Literal("library/redis".into())
    );
    assert_eq!(
        ok("constraint:dir==srv/").value(),
        &Value::Literal("srv/".into())
    );
}

#[test]
fn expressions_display_and_parse_back() {
    for entry in [
        "constraint:region==us-east",
        "constraint:region!=~us-*",
        "affinity:image==~/(?i)redis/",
        "affinity:com.example.type!=frontend",
    ] {
        let expr: Expr = entry.parse().expect("valid");
        assert_eq!(expr.to_string(), entry);
        assert_eq!(parse(&expr.to_string()).expect("valid"), expr);
    }
    assert_eq!(
        Expr::parse(Kind::Constraint, "a=b")
            .unwrap_err()
            .to_string(),
        "invalid placement expression `constraint:a=b`: `=` is not an operator: use ==, != or \
         their soft variants ==~ and !=~"
    );
}

#[test]
fn swarm_mode_translations() {
    let translate = |entry: &str| swarm_constraint(&ok(entry));
    assert_eq!(
        translate("constraint:architecture==x86_64").as_deref(),
        Some("node.labels.fact.architecture==x86_64")
    );
    assert_eq!(
        translate("constraint:os.release.full!=22.04").as_deref(),
        Some("node.labels.fact.os.release.full!=22.04")
    );
    assert_eq!(
        translate("constraint:os.name==Ubuntu Server").as_deref(),
        Some("node.labels.fact.os.name==Ubuntu Server")
    );
    assert_eq!(
        translate("constraint:node==worker-1").as_deref(),
        Some("node.hostname==worker-1")
    );
    assert_eq!(
        translate("constraint:node!=worker-1").as_deref(),
        Some("node.hostname!=worker-1")
    );
    // Something that looks like a Swarm mode node id may be one: `node.hostname` would miss.
    assert_eq!(
        translate("constraint:node==7tqxd3j4mzhzsg0oh2nsdw0g4"),
        None
    );
    // Soft, globs, regular expressions, affinities: resolved by the adapter.
    assert_eq!(translate("constraint:architecture==~x86_64"), None);
    assert_eq!(translate("constraint:architecture==x86*"), None);
    assert_eq!(translate("constraint:architecture==/x86/"), None);
    assert_eq!(translate("affinity:container==db"), None);
    assert_eq!(translate("affinity:image==redis"), None);
    assert_eq!(translate("affinity:com.example.type==web"), None);
    // Characters Swarm mode refuses in a value, and cannot escape.
    assert_eq!(translate("constraint:cpu==Intel @ 2GHz"), None);
    assert_eq!(translate("constraint:tags==a,b"), None);
    assert_eq!(translate("constraint:city==Zürich"), None);
    assert_eq!(translate("constraint:x=={y}"), None);
}

// ---------------------------------------------------------------------------------------
// Properties.

mod properties {
    use std::collections::BTreeMap;

    use powerstrip_placement::expr::{
        Expr, Glob, Node, Op, from_env, from_labels, parse, select, to_labels,
    };
    use proptest::prelude::*;
    use regex::Regex;

    /// A reference glob matcher: the pattern as an anchored regular expression.
    fn reference(pattern: &str, candidate: &str) -> bool {
        let body: Vec<String> = pattern.split('*').map(regex::escape).collect();
        let regex = Regex::new(&format!("(?s)^{}$", body.join(".*"))).expect("escaped");
        regex.is_match(candidate)
    }

    /// A valid key.
    fn key() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_.-]{0,8}"
    }

    /// A valid literal or glob value (no leading operator characters, `/`, `~` or spaces).
    fn plain_value() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9:_.*-][a-zA-Z0-9:_.* @,()-]{0,8}[a-zA-Z0-9:_.*-]|[a-zA-Z0-9:_.*-]"
            .prop_filter("no second operator", |v| {
                !v.contains("==") && !v.contains("!=")
            })
    }

    /// A valid entry.
    fn entry() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("constraint:"), Just("affinity:")],
            key(),
            prop_oneof![Just("=="), Just("!="), Just("==~"), Just("!=~")],
            prop_oneof![
                plain_value(),
                "[a-z0-9.^$|()\\[\\]+?*]{1,6}".prop_filter_map("compiles", |re| {
                    Regex::new(&re).ok().map(|_| format!("/{re}/"))
                }),
            ],
        )
            .prop_map(|(prefix, key, op, value)| format!("{prefix}{key}{op}{value}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn globs_agree_with_the_reference(pattern in "[ab*]{0,8}", candidate in "[ab]{0,10}") {
            prop_assert_eq!(Glob::new(&pattern).is_match(&candidate), reference(&pattern, &candidate));
        }

        #[test]
        fn globs_agree_with_the_reference_on_any_text(pattern in "[a.*\\\\é]{0,6}", candidate in "\\PC{0,8}") {
            prop_assert_eq!(Glob::new(&pattern).is_match(&candidate), reference(&pattern, &candidate));
        }

        #[test]
        fn parsing_never_panics_and_round_trips(
            entry in prop_oneof!["(constraint|affinity):\\PC{0,16}", "(constraint|affinity):[a=!~/*<> \t\\[]{0,10}"],
        ) {
            if let Ok(expr) = parse(&entry) {
                prop_assert_eq!(expr.to_string(), entry.clone());
                prop_assert_eq!(parse(&expr.to_string()).ok(), Some(expr));
            }
        }

        #[test]
        fn valid_entries_parse_and_round_trip_through_labels(entries in proptest::collection::vec(entry(), 0..6)) {
            let (exprs, rest) = from_env(&entries).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(rest.is_empty());
            prop_assert_eq!(exprs.len(), entries.len());
            let back = from_labels(to_labels(&exprs)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // Constraints first, then affinities, each in order.
            let mut sorted: Vec<Expr> = exprs.clone();
            sorted.sort_by_key(|e| e.kind());
            prop_assert_eq!(back, sorted);
        }

        #[test]
        fn ne_is_the_negation_of_eq_and_select_keeps_only_satisfying_nodes(
            entries in proptest::collection::vec(entry(), 1..4),
            values in proptest::collection::vec(proptest::option::of("[a-z0-9.*:@ -]{0,6}"), 3),
        ) {
            let (exprs, _) = from_env(&entries).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let facts: Vec<BTreeMap<String, String>> = values
                .iter()
                .map(|value| {
                    exprs
                        .iter()
                        .filter_map(|e| Some((e.key().to_string(), value.clone()?)))
                        .collect()
                })
                .collect();
            let nodes: Vec<Node<'_>> = facts
                .iter()
                .map(|facts| Node { id: "id", name: "name", facts, containers: &[], images: &[] })
                .collect();
            for expr in &exprs {
                let flipped = match expr.op() { Op::Eq => "!=", Op::Ne => "==" };
                let text = format!("{}{}{}{}", expr.kind().prefix(), expr.key(), flipped,
                    &expr.text()[expr.key().len() + 2..]);
                let other = parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for node in &nodes {
                    prop_assert_ne!(expr.matches(node), other.matches(node));
                }
            }
            let selection = select(&exprs, &nodes);
            for node in &selection.nodes {
                for expr in &exprs {
                    let dropped = selection.dropped.iter().any(|d| std::ptr::eq(*d, expr));
                    prop_assert!(dropped || expr.matches(node));
                }
            }
            prop_assert_eq!(selection.unsatisfied.is_some(), selection.nodes.is_empty());
        }
    }
}
