//! `deploy/template.yaml` against the code, so the two cannot drift:
//!
//! - the tables it declares are the ones `create-tables` makes: compared
//!   with the table specs of `store::dynamodb::schema` (no DynamoDB needed),
//!   and with what DynamoDB Local describes after `create_tables`;
//! - its IAM policies allow exactly the DynamoDB calls the service makes:
//!   the served API (the function's role) and the keys CLI (the operators'
//!   policy). The calls are recorded on the wire by a proxy in front of
//!   DynamoDB Local, which sees each item of a TransactWriteItems (IAM
//!   authorises those one by one, as PutItem/UpdateItem/DeleteItem) and the
//!   index of each Query; the store's own request counter confirms that the
//!   proxy saw every request.
//!
//! The template uses CloudFormation's short tags (`!Ref`, `!Sub`, `!GetAtt`,
//! …); they are read as their long forms (`Ref`, `Fn::Sub`, …) and the few
//! intrinsics the template needs are evaluated here with made-up account
//! and region.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use triggers_api::store::dynamodb::schema::{TableSpec, TABLES};

const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/template.yaml");
const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

/// A YAML value as JSON, CloudFormation short tags as their long forms.
fn yaml_to_json(y: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match y {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64().expect("a YAML number"))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    other => panic!("a non-string mapping key in the template: {other:?}"),
                };
                out.insert(key, yaml_to_json(v));
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            let tag = t.tag.to_string();
            let tag = tag.trim_start_matches('!');
            let value = yaml_to_json(t.value);
            match tag {
                "Ref" => json!({ "Ref": value }),
                "Condition" => json!({ "Condition": value }),
                // `!GetAtt Resource.Attribute`
                "GetAtt" => match value.as_str().and_then(|s| s.split_once('.')) {
                    Some((res, attr)) => json!({ "Fn::GetAtt": [res, attr] }),
                    None => json!({ "Fn::GetAtt": value }),
                },
                other => json!({ format!("Fn::{other}"): value }),
            }
        }
    }
}

/// The template, with the parameters' defaults and a table prefix.
struct Template {
    doc: Value,
    params: BTreeMap<String, String>,
}

impl Template {
    fn load(prefix: &str) -> Template {
        let text = std::fs::read_to_string(TEMPLATE).expect("read deploy/template.yaml");
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
        let doc = yaml_to_json(yaml);
        let mut params = BTreeMap::new();
        for (name, p) in doc["Parameters"].as_object().expect("Parameters") {
            let default = match &p["Default"] {
                Value::String(s) => s.clone(),
                Value::Null => format!("<{name}>"),
                other => other.to_string(),
            };
            params.insert(name.clone(), default);
        }
        assert!(
            params.contains_key("TablePrefix"),
            "no TablePrefix parameter"
        );
        params.insert("TablePrefix".into(), prefix.to_owned());
        Template { doc, params }
    }

    fn resource(&self, id: &str) -> &Value {
        let r = &self.doc["Resources"][id];
        assert!(r.is_object(), "no resource {id} in the template");
        r
    }

    fn of_type(&self, ty: &str) -> Vec<(&str, &Value)> {
        self.doc["Resources"]
            .as_object()
            .expect("Resources")
            .iter()
            .filter(|(_, r)| r["Type"] == ty)
            .map(|(id, r)| (id.as_str(), r))
            .collect()
    }

    /// What `Ref name` gives.
    fn ref_value(&self, name: &str) -> String {
        if let Some(v) = self.params.get(name) {
            return v.clone();
        }
        match name {
            "AWS::Region" => return REGION.into(),
            "AWS::AccountId" => return ACCOUNT.into(),
            "AWS::Partition" => return "aws".into(),
            "AWS::StackName" => return "stack".into(),
            _ => {}
        }
        let r = self.resource(name);
        if r["Type"] == "AWS::DynamoDB::Table" {
            self.eval_str(&r["Properties"]["TableName"])
        } else {
            format!("<{name}>")
        }
    }

    /// What `Fn::GetAtt [res, attr]` gives: real ARNs for tables, a
    /// placeholder for the rest.
    fn get_att(&self, res: &str, attr: &str) -> String {
        let r = self.resource(res);
        if r["Type"] == "AWS::DynamoDB::Table" && attr == "Arn" {
            table_arn(&self.ref_value(res), None)
        } else {
            format!("<{res}.{attr}>")
        }
    }

    fn sub(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closing brace in Fn::Sub") + start;
            let name = &rest[start + 2..end];
            out.push_str(&match name.split_once('.') {
                Some((res, attr)) if !name.starts_with("AWS::") => self.get_att(res, attr),
                _ => self.ref_value(name),
            });
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Evaluates the intrinsics a value uses (Ref, Fn::Sub, Fn::GetAtt).
    fn eval(&self, v: &Value) -> Value {
        match v {
            Value::Object(m) if m.len() == 1 => {
                let (k, arg) = m.iter().next().expect("one entry");
                match k.as_str() {
                    "Ref" => Value::String(self.ref_value(arg.as_str().expect("Ref name"))),
                    "Fn::Sub" => Value::String(self.sub(arg.as_str().expect("Fn::Sub text"))),
                    "Fn::GetAtt" => {
                        let parts = arg.as_array().expect("Fn::GetAtt [res, attr]");
                        Value::String(self.get_att(
                            parts[0].as_str().expect("resource"),
                            parts[1].as_str().expect("attribute"),
                        ))
                    }
                    f if f.starts_with("Fn::") => panic!("{f} is not evaluated by this test"),
                    _ => Value::Object(m.iter().map(|(k, v)| (k.clone(), self.eval(v))).collect()),
                }
            }
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), self.eval(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(|v| self.eval(v)).collect()),
            other => other.clone(),
        }
    }

    fn eval_str(&self, v: &Value) -> String {
        match self.eval(v) {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }

    /// The table resource whose name is `name`.
    fn table_named(&self, name: &str) -> (&str, &Value) {
        let found: Vec<_> = self
            .of_type("AWS::DynamoDB::Table")
            .into_iter()
            .filter(|(_, r)| self.eval_str(&r["Properties"]["TableName"]) == name)
            .collect();
        assert_eq!(found.len(), 1, "one table named {name} in the template");
        found[0]
    }

    /// (action, resource pattern) of every DynamoDB action a policy
    /// document allows.
    fn dynamodb_grants(&self, doc: &Value) -> BTreeSet<(String, String)> {
        let statements = match &doc["Statement"] {
            Value::Array(a) => a.clone(),
            one => vec![one.clone()],
        };
        let mut grants = BTreeSet::new();
        for s in statements {
            assert!(
                s.get("NotAction").is_none() && s.get("NotResource").is_none(),
                "NotAction/NotResource are not used: {s}"
            );
            assert_eq!(s["Effect"], "Allow", "only Allow statements: {s}");
            let list = |v: &Value| -> Vec<Value> {
                match v {
                    Value::Array(a) => a.clone(),
                    one => vec![one.clone()],
                }
            };
            for action in list(&s["Action"]) {
                let action = action.as_str().expect("an action").to_owned();
                if !action.starts_with("dynamodb:") {
                    continue;
                }
                for resource in list(&s["Resource"]) {
                    grants.insert((action.clone(), self.eval_str(&resource)));
                }
            }
        }
        grants
    }

    /// Everything the function's role allows on DynamoDB: its inline
    /// policies and any policy resource attached to it.
    fn function_grants(&self) -> BTreeSet<(String, String)> {
        let functions = self.of_type("AWS::Lambda::Function");
        assert_eq!(functions.len(), 1, "one function");
        let role = match &functions[0].1["Properties"]["Role"]["Fn::GetAtt"] {
            Value::Array(a) if a[1] == "Arn" => a[0].as_str().expect("role").to_owned(),
            other => panic!("the function's Role is not GetAtt ROLE.Arn: {other}"),
        };
        let r = self.resource(&role);
        assert!(
            r["Properties"].get("ManagedPolicyArns").is_none(),
            "managed policies on the function role would grant what this test cannot see"
        );
        let mut grants = BTreeSet::new();
        for p in r["Properties"]["Policies"].as_array().into_iter().flatten() {
            grants.extend(self.dynamodb_grants(&p["PolicyDocument"]));
        }
        for ty in ["AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"] {
            for (_, p) in self.of_type(ty) {
                let attached = p["Properties"]["Roles"]
                    .as_array()
                    .is_some_and(|roles| roles.iter().any(|x| x["Ref"] == role.as_str()));
                if attached {
                    grants.extend(self.dynamodb_grants(&p["Properties"]["PolicyDocument"]));
                }
            }
        }
        grants
    }
}

fn table_arn(table: &str, index: Option<&str>) -> String {
    let mut arn = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}");
    if let Some(i) = index {
        arn.push_str("/index/");
        arn.push_str(i);
    }
    arn
}

/// IAM's wildcard match (`*` any run, `?` one character).
fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Compares what was called with what is allowed, both ways; `Err` lists
/// the differences.
fn compare_grants(
    who: &str,
    called: &BTreeSet<(String, String)>,
    allowed: &BTreeSet<(String, String)>,
) -> Result<(), String> {
    let denied: Vec<_> = called
        .iter()
        .filter(|(a, r)| !allowed.iter().any(|(ga, gr)| ga == a && glob(gr, r)))
        .collect();
    let unused: Vec<_> = allowed
        .iter()
        .filter(|(ga, gr)| !called.iter().any(|(a, r)| ga == a && glob(gr, r)))
        .collect();
    if denied.is_empty() && unused.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{who}:\n  called but not allowed: {denied:#?}\n  allowed but never called: {unused:#?}"
    ))
}

#[test]
fn yaml_short_tags_read_as_cloudformation_long_forms() {
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        "a: !Ref P\nb: !GetAtt T.Arn\nc: !Sub '${T.Arn}/index/x'\nd: !If [C, 1, 2]\n",
    )
    .expect("yaml");
    assert_eq!(
        yaml_to_json(y),
        json!({
            "a": {"Ref": "P"},
            "b": {"Fn::GetAtt": ["T", "Arn"]},
            "c": {"Fn::Sub": "${T.Arn}/index/x"},
            "d": {"Fn::If": ["C", 1, 2]},
        })
    );
    assert!(glob(
        "arn:*:table/t/index/*",
        "arn:aws:table/t/index/by_type"
    ));
    assert!(!glob("arn:aws:table/t", "arn:aws:table/t/index/by_type"));
    assert!(glob("a?c", "abc") && !glob("a?c", "abbc"));
}

fn key_schema_of(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("KeySchema")
        .iter()
        .map(|k| {
            (
                k["AttributeName"].as_str().expect("name").to_owned(),
                k["KeyType"].as_str().expect("type").to_owned(),
            )
        })
        .collect()
}

fn spec_key_schema(
    keys: Vec<(&str, triggers_api::store::dynamodb::schema::KeyRole)>,
) -> Vec<(String, String)> {
    keys.into_iter()
        .map(|(n, r)| (n.to_owned(), r.as_str().to_owned()))
        .collect()
}

fn spec_attributes(spec: &TableSpec) -> BTreeSet<(String, String)> {
    spec.attribute_definitions()
        .into_iter()
        .map(|a| (a.name.to_owned(), a.attr_type.as_str().to_owned()))
        .collect()
}

/// (name, key schema, projection) of each LSI the spec has.
type IndexShape = (String, Vec<(String, String)>, String);

fn spec_indexes(spec: &TableSpec) -> Vec<IndexShape> {
    spec.local_indexes
        .iter()
        .map(|i| {
            (
                i.name.to_owned(),
                spec_key_schema(spec.index_key_schema(i)),
                i.projection.as_str().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_template_declares_the_tables_exactly_as_create_tables_makes_them() {
    let prefix = "tp-1";
    let t = Template::load(prefix);
    assert_eq!(
        t.of_type("AWS::DynamoDB::Table").len(),
        TABLES.len(),
        "the template has exactly the store's tables"
    );
    for spec in TABLES {
        let name = spec.table_name(prefix);
        let (id, table) = t.table_named(&name);
        let p = &table["Properties"];
        assert_eq!(p["BillingMode"], spec.billing_mode, "{id}");
        assert_eq!(
            key_schema_of(&p["KeySchema"]),
            spec_key_schema(spec.key_schema()),
            "{id}: KeySchema"
        );
        let attrs: Vec<(String, String)> = p["AttributeDefinitions"]
            .as_array()
            .expect("AttributeDefinitions")
            .iter()
            .map(|a| {
                (
                    a["AttributeName"].as_str().expect("name").to_owned(),
                    a["AttributeType"].as_str().expect("type").to_owned(),
                )
            })
            .collect();
        assert_eq!(
            attrs.len(),
            spec.attribute_definitions().len(),
            "{id}: no extra attributes"
        );
        assert_eq!(
            attrs.into_iter().collect::<BTreeSet<_>>(),
            spec_attributes(spec),
            "{id}: AttributeDefinitions"
        );
        let lsis: Vec<IndexShape> = p["LocalSecondaryIndexes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        assert!(
                            i["Projection"].get("NonKeyAttributes").is_none(),
                            "{id}: the index projects keys only"
                        );
                        (
                            i["IndexName"].as_str().expect("IndexName").to_owned(),
                            key_schema_of(&i["KeySchema"]),
                            i["Projection"]["ProjectionType"]
                                .as_str()
                                .expect("ProjectionType")
                                .to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(lsis, spec_indexes(spec), "{id}: LocalSecondaryIndexes");
        assert!(
            p.get("GlobalSecondaryIndexes").is_none(),
            "{id}: the store uses no GSI (an inbox read must be strongly consistent)"
        );
        let ttl = &p["TimeToLiveSpecification"];
        match spec.ttl_attribute {
            Some(attr) => {
                assert_eq!(ttl["AttributeName"], attr, "{id}: TTL attribute");
                assert_eq!(ttl["Enabled"], true, "{id}: TTL enabled");
            }
            None => assert!(ttl.is_null(), "{id}: no TTL"),
        }
    }
}

#[test]
fn the_template_tables_are_recoverable_encrypted_and_outlive_the_stack() {
    let t = Template::load("tp-1");
    for (id, table) in t.of_type("AWS::DynamoDB::Table") {
        let p = &table["Properties"];
        assert_eq!(
            p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], true,
            "{id}: PITR"
        );
        assert_eq!(p["SSESpecification"]["SSEEnabled"], true, "{id}: SSE");
        assert_eq!(p["DeletionProtectionEnabled"], true, "{id}");
        assert_eq!(table["DeletionPolicy"], "Retain", "{id}");
        assert_eq!(table["UpdateReplacePolicy"], "Retain", "{id}");
    }
}

#[test]
fn the_function_runs_the_arm64_bootstrap_on_the_stack_tables_and_never_creates_them() {
    let prefix = "tp-1";
    let t = Template::load(prefix);
    let functions = t.of_type("AWS::Lambda::Function");
    assert_eq!(functions.len(), 1);
    let p = &functions[0].1["Properties"];
    assert_eq!(p["Runtime"], "provided.al2023");
    assert_eq!(p["Handler"], "bootstrap");
    assert_eq!(p["Architectures"], json!(["arm64"]));
    let env = t.eval(&p["Environment"]["Variables"]);
    assert_eq!(env["TRIGGERS_STORE"], format!("dynamodb://{prefix}"));
    assert_eq!(env["TRIGGERS_LOG_FORMAT"], "json");
    assert!(
        env.get("TRIGGERS_CREATE_TABLES").is_none(),
        "the stack owns the tables; the function's role may not create them"
    );
    // Every TRIGGERS_ variable is one the server reads.
    let known = [
        "TRIGGERS_STORE",
        "TRIGGERS_LOG_FORMAT",
        "TRIGGERS_REQUEST_TIMEOUT_SECS",
        "TRIGGERS_STORE_TIMEOUT_MS",
        "TRIGGERS_DEDUP_WINDOW_SECS",
        "TRIGGERS_DELIVERED_RETENTION_SECS",
    ];
    for (k, _) in env.as_object().expect("variables") {
        assert!(
            !k.starts_with("TRIGGERS_") || known.contains(&k.as_str()),
            "unexpected {k}"
        );
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_triggers-api"))
        .args(["serve", "--help"])
        .output()
        .expect("triggers-api serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for k in known {
        assert!(help.contains(k), "`serve --help` does not mention {k}");
    }
}

/// Against DynamoDB Local (`TRIGGERS_TEST_DYNAMODB_ENDPOINT`, as the other
/// DynamoDB tests).
mod dynamodb {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    use axum::extract::{Request, State};
    use axum::http::{HeaderName, StatusCode};
    use axum::response::{IntoResponse, Response};
    use serde_json::{json, Value};
    use triggers_api::domain::Role;
    use triggers_api::store::dynamodb::schema::TABLES;
    use triggers_api::store::dynamodb::DynamoStore;

    use super::{compare_grants, key_schema_of, table_arn, Template};
    use crate::support::{self, test_settings, Location, TestApp, TestStore};

    /// One DynamoDB request as IAM authorises it: the operation, and the
    /// (action, resource ARN) pairs it needs.
    #[derive(Debug, Clone)]
    struct Recorded {
        operation: String,
        grants: Vec<(String, String)>,
    }

    /// What IAM checks for one request body of `operation`.
    fn grants_of(operation: &str, body: &Value) -> Vec<(String, String)> {
        let table_of = |v: &Value| -> String {
            v["TableName"]
                .as_str()
                .unwrap_or_else(|| panic!("no TableName in {operation}: {v}"))
                .to_owned()
        };
        match operation {
            // Each item is authorised as its own action.
            "TransactWriteItems" => body["TransactItems"]
                .as_array()
                .expect("TransactItems")
                .iter()
                .map(|item| {
                    let (kind, inner) = item
                        .as_object()
                        .and_then(|o| o.iter().next())
                        .expect("one kind per item");
                    let action = match kind.as_str() {
                        "Put" => "PutItem",
                        "Update" => "UpdateItem",
                        "Delete" => "DeleteItem",
                        "ConditionCheck" => "ConditionCheckItem",
                        other => panic!("unknown transaction item {other}"),
                    };
                    (
                        format!("dynamodb:{action}"),
                        table_arn(&table_of(inner), None),
                    )
                })
                .collect(),
            "TransactGetItems" => body["TransactItems"]
                .as_array()
                .expect("TransactItems")
                .iter()
                .map(|item| {
                    (
                        "dynamodb:GetItem".to_owned(),
                        table_arn(&table_of(&item["Get"]), None),
                    )
                })
                .collect(),
            "BatchGetItem" | "BatchWriteItem" => body["RequestItems"]
                .as_object()
                .expect("RequestItems")
                .keys()
                .map(|t| (format!("dynamodb:{operation}"), table_arn(t, None)))
                .collect(),
            _ => vec![(
                format!("dynamodb:{operation}"),
                table_arn(&table_of(body), body["IndexName"].as_str()),
            )],
        }
    }

    struct ProxyState {
        upstream: String,
        http: reqwest::Client,
        recorded: Mutex<Vec<Recorded>>,
    }

    /// A recording HTTP proxy in front of DynamoDB Local.
    struct Proxy {
        url: String,
        state: Arc<ProxyState>,
    }

    impl Proxy {
        async fn start(upstream: String) -> Proxy {
            let state = Arc::new(ProxyState {
                upstream,
                http: reqwest::Client::new(),
                recorded: Mutex::new(Vec::new()),
            });
            let router = axum::Router::new()
                .fallback(forward)
                .with_state(state.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            Proxy { url, state }
        }

        /// The requests recorded since the last call.
        fn take(&self) -> Vec<Recorded> {
            std::mem::take(&mut *self.state.recorded.lock().expect("lock"))
        }
    }

    async fn forward(State(st): State<Arc<ProxyState>>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("request body");
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        let operation = target.rsplit('.').next().unwrap_or(target).to_owned();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let grants = grants_of(&operation, &json);
        st.recorded
            .lock()
            .expect("lock")
            .push(Recorded { operation, grants });

        let url = format!(
            "{}{}",
            st.upstream,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut up = st.http.request(parts.method.clone(), url).body(body);
        for (name, value) in &parts.headers {
            if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                up = up.header(name, value);
            }
        }
        let resp = match up.send().await {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap_or_default();
        let mut out = (
            StatusCode::from_u16(status.as_u16()).expect("status"),
            bytes.to_vec(),
        )
            .into_response();
        for (name, value) in &headers {
            if !matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "connection"
            ) {
                out.headers_mut().insert(
                    HeaderName::from_bytes(name.as_str().as_bytes()).expect("header name"),
                    value.as_bytes().try_into().expect("header value"),
                );
            }
        }
        out
    }

    fn union(recorded: &[Recorded]) -> BTreeSet<(String, String)> {
        recorded.iter().flat_map(|r| r.grants.clone()).collect()
    }

    fn operation_counts(recorded: &[Recorded]) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for r in recorded {
            *counts.entry(r.operation.clone()).or_default() += 1;
        }
        counts
    }

    #[tokio::test]
    async fn create_tables_makes_the_tables_the_template_declares() {
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let _store = support::dynamodb::open(&prefix).await;
        let endpoint = support::dynamodb::endpoint().await;
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .load()
            .await;
        let raw = aws_sdk_dynamodb::Client::new(&conf);
        let t = Template::load(&prefix);
        for spec in TABLES {
            let name = spec.table_name(&prefix);
            let (id, table) = t.table_named(&name);
            let declared = &table["Properties"];
            let described = raw
                .describe_table()
                .table_name(&name)
                .send()
                .await
                .expect("describe")
                .table
                .expect("table");

            let keys: Vec<(String, String)> = described
                .key_schema()
                .iter()
                .map(|k| {
                    (
                        k.attribute_name().to_owned(),
                        k.key_type().as_str().to_owned(),
                    )
                })
                .collect();
            assert_eq!(
                keys,
                key_schema_of(&declared["KeySchema"]),
                "{id}: KeySchema"
            );

            let attrs: BTreeSet<(String, String)> = described
                .attribute_definitions()
                .iter()
                .map(|a| {
                    (
                        a.attribute_name().to_owned(),
                        a.attribute_type().as_str().to_owned(),
                    )
                })
                .collect();
            let declared_attrs: BTreeSet<(String, String)> = declared["AttributeDefinitions"]
                .as_array()
                .expect("AttributeDefinitions")
                .iter()
                .map(|a| {
                    (
                        a["AttributeName"].as_str().expect("name").to_owned(),
                        a["AttributeType"].as_str().expect("type").to_owned(),
                    )
                })
                .collect();
            assert_eq!(attrs, declared_attrs, "{id}: AttributeDefinitions");

            let lsis: Vec<Value> = described
                .local_secondary_indexes()
                .iter()
                .map(|i| {
                    json!({
                        "IndexName": i.index_name(),
                        "KeySchema": i.key_schema().iter().map(|k| json!({
                            "AttributeName": k.attribute_name(),
                            "KeyType": k.key_type().as_str(),
                        })).collect::<Vec<_>>(),
                        "Projection": {"ProjectionType": i.projection().and_then(|p| p.projection_type()).map(|p| p.as_str())},
                    })
                })
                .collect();
            let declared_lsis = declared["LocalSecondaryIndexes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                Value::Array(lsis),
                Value::Array(declared_lsis),
                "{id}: LocalSecondaryIndexes"
            );
            assert!(
                described.global_secondary_indexes().is_empty(),
                "{id}: GSIs"
            );
            if let Some(billing) = described
                .billing_mode_summary()
                .and_then(|b| b.billing_mode())
            {
                assert_eq!(
                    declared["BillingMode"],
                    billing.as_str(),
                    "{id}: BillingMode"
                );
            }

            let ttl = raw
                .describe_time_to_live()
                .table_name(&name)
                .send()
                .await
                .expect("describe TTL");
            let described_ttl = ttl
                .time_to_live_description()
                .filter(|d| d.time_to_live_status().map(|s| s.as_str()) == Some("ENABLED"))
                .and_then(|d| d.attribute_name().map(str::to_owned));
            let declared_ttl = declared["TimeToLiveSpecification"]["AttributeName"]
                .as_str()
                .map(str::to_owned);
            assert_eq!(described_ttl, declared_ttl, "{id}: TTL attribute");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_function_role_allows_exactly_the_dynamodb_calls_the_served_api_makes() {
        let endpoint = support::dynamodb::endpoint().await;
        let proxy = Proxy::start(endpoint).await;
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        // The stack creates the tables, not the function: not recorded.
        let _tables = support::dynamodb::open(&prefix).await;
        let store = Arc::new(
            DynamoStore::connect(&support::dynamodb::config(&proxy.url, &prefix))
                .await
                .expect("connect through the proxy"),
        );
        let app = TestApp::start_on(
            TestStore {
                store: store.clone(),
                _dir: None,
                location: Location::Other,
            },
            triggers_api::config::Settings {
                // Quarantine after two leases, to exercise it quickly.
                max_leases: 2,
                ..test_settings()
            },
        )
        .await;
        let startup = proxy.take();
        // Keys are made by operators (the other test), not by the function.
        let key = app.key("acme", Role::Creator).await;
        let viewer = app.key("acme", Role::Viewer).await;
        let keys_admin = proxy.take();
        assert!(!keys_admin.is_empty());

        // Every request path, each outcome that calls the store differently.
        let body = json!({"event_type": "order.created", "payload": {"n": 1}, "source": "shop"});
        let id = app.create_event(&key, &body).await;
        assert_eq!(app.post_event_status(&key, &body).await, 200, "duplicate");
        let big = json!({
            "event_type": "big",
            "payload": {"p": "p".repeat(250 * 1024)},
            "metadata": {"m": "m".repeat(250 * 1024)},
        });
        let big_id = app.create_event(&key, &big).await;
        app.create_event(&key, &json!({"event_type": "other", "payload": {}}))
            .await;
        // Batch ingest (new, duplicate and refused events) and idempotency
        // keys: claims (PutItem), kept responses (UpdateItem), a replay, a
        // conflict. (Releasing a claim after a 5xx is a DeleteItem on the
        // same table: the grant the ack's deletes need already.)
        let batch = json!({"events": [
            {"event_type": "batched", "payload": {"n": 1}},
            {"event_type": "batched", "payload": {"n": 1}},
            body.clone(),
            {"event_type": ""},
        ]});
        let idem = |b: &Value, k: &str| {
            app.post_json("/events/batch", &key, b)
                .header("idempotency-key", k)
                .send()
        };
        let first = idem(&batch, "deploy-1").await.expect("batch");
        assert_eq!(first.status(), 200);
        let replay = idem(&batch, "deploy-1").await.expect("batch again");
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        let other = json!({"events": [{"event_type": "batched", "payload": {"n": 2}}]});
        assert_eq!(
            idem(&other, "deploy-1").await.expect("conflict").status(),
            409
        );
        let single = app
            .post_json(
                "/events",
                &key,
                &json!({"event_type": "keyed", "payload": {}}),
            )
            .header("idempotency-key", "deploy-2")
            .send()
            .await
            .expect("keyed");
        assert_eq!(single.status(), 201);
        app.event(&viewer, &id).await;
        app.event(&key, &big_id).await;
        assert_eq!(app.walk_inbox(&viewer, 1, None).await.len(), 5);
        assert_eq!(
            app.walk_inbox(&key, 1, Some("big")).await,
            vec![big_id.clone()]
        );
        assert_eq!(app.ack(&key, &id).await, 204);
        assert_eq!(app.ack(&key, &id).await, 204, "again");
        assert_eq!(app.ack(&key, &uuid::Uuid::now_v7().to_string()).await, 404);
        assert_eq!(app.ack(&key, &big_id).await, 204, "metadata in parts");
        app.event(&key, &id).await;
        // Leases: lease (all, and by type), ack and release (by lease and a
        // subset, and stale), expiry, quarantine listing, requeue, a long
        // poll that finds nothing, DELETE of a leased event.
        let lease = |body: Value| {
            let req = app.post_json("/inbox/lease", &key, &body);
            async move {
                let resp = req.send().await.expect("lease");
                assert_eq!(resp.status(), 200);
                resp.json::<Value>().await.expect("lease json")
            }
        };
        let settle = |path: &'static str, body: Value| {
            let req = app.post_json(path, &key, &body);
            async move {
                let resp = req.send().await.expect("settle");
                let status = resp.status();
                let v = resp.json::<Value>().await.expect("settle json");
                assert_eq!(status, 200, "{path}: {v}");
                v
            }
        };
        for i in 0..4 {
            app.create_event(&key, &json!({"event_type": "job", "payload": {"i": i}}))
                .await;
        }
        let l1 = lease(json!({"limit": 2, "event_type": "job"})).await;
        let l1_ids: Vec<Value> = l1["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["event_id"].clone())
            .collect();
        assert_eq!(l1_ids.len(), 2);
        settle(
            "/inbox/ack",
            json!({"lease_id": l1["lease_id"], "event_ids": [l1_ids[0]]}),
        )
        .await;
        settle("/inbox/release", json!({"lease_id": l1["lease_id"]})).await;
        let l2 = lease(json!({"limit": 100, "lease_seconds": 1})).await;
        assert!(!l2["events"].as_array().expect("events").is_empty());
        app.clock.advance(chrono::Duration::seconds(2));
        let l3 = lease(json!({"limit": 100})).await;
        // l2's events were leased again since: stale for l2.
        let stale = settle("/inbox/ack", json!({"lease_id": l2["lease_id"]})).await;
        assert!(!stale["stale"].as_array().expect("stale").is_empty());
        let leased_id = l3["events"][0]["event_id"].as_str().expect("id").to_owned();
        assert_eq!(
            app.ack(&key, &leased_id).await,
            204,
            "DELETE of a leased event"
        );
        settle("/inbox/release", json!({"lease_id": l3["lease_id"]})).await;
        // Leased twice (l2, l3) with max_leases 2: quarantined now.
        let quarantined = app
            .get("/inbox?state=quarantined", &viewer)
            .send()
            .await
            .expect("quarantined");
        assert_eq!(quarantined.status(), 200);
        let q: Value = quarantined.json().await.expect("json");
        let q_id = q["events"][0]["event_id"]
            .as_str()
            .expect("a quarantined event")
            .to_owned();
        let requeued = app
            .client
            .post(app.url(&format!("/events/{q_id}/requeue")))
            .bearer_auth(&key)
            .send()
            .await
            .expect("requeue");
        assert_eq!(requeued.status(), 200);
        // Drain, then a long poll that finds nothing within its wait.
        loop {
            let l = lease(json!({"limit": 100})).await;
            if l["events"].as_array().expect("events").is_empty() {
                break;
            }
            settle("/inbox/ack", json!({"lease_id": l["lease_id"]})).await;
        }
        let waited = lease(json!({"limit": 1, "wait_seconds": 1})).await;
        assert!(waited["events"].as_array().expect("events").is_empty());
        let unknown_lease = app
            .post_json(
                "/inbox/ack",
                &key,
                &json!({"lease_id": uuid::Uuid::new_v4().to_string()}),
            )
            .send()
            .await
            .expect("unknown lease");
        assert_eq!(unknown_lease.status(), 404);

        let status = app
            .client
            .get(app.url("/status"))
            .send()
            .await
            .expect("status");
        assert_eq!(status.status(), 200);
        let unknown = format!("trg_zzzzzzzzzzzzzzzz{}", &key[20..]);
        let resp = app.get("/inbox", &unknown).send().await.expect("send");
        assert_eq!(resp.status(), 401);
        // The purge (a no-op on DynamoDB: TTL deletes) and the rest.
        app.state
            .store
            .purge(chrono::Utc::now(), chrono::Utc::now(), chrono::Utc::now())
            .await
            .expect("purge");
        let requests = proxy.take();

        let served: Vec<Recorded> = startup.iter().chain(&requests).cloned().collect();
        // The proxy saw every request the store sent (its own counter).
        let all: Vec<Recorded> = served.iter().chain(&keys_admin).cloned().collect();
        assert_eq!(operation_counts(&all), store.request_counts());
        // PutItem and UpdateItem on their own: idempotency records.
        for op in [
            "TransactWriteItems",
            "GetItem",
            "Query",
            "BatchGetItem",
            "PutItem",
            "UpdateItem",
        ] {
            assert!(
                operation_counts(&requests).contains_key(op),
                "{op} was not exercised"
            );
        }

        let t = Template::load(&prefix);
        if let Err(diff) = compare_grants(
            "the function role (deploy/template.yaml FunctionRole) against the served API",
            &union(&served),
            &t.function_grants(),
        ) {
            panic!("{diff}");
        }
        // Key administration needs more than the function has.
        let admin = union(&keys_admin);
        assert!(
            !admin.is_subset(&union(&served)),
            "creating keys should need a grant the function lacks: {admin:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_keys_admin_policy_allows_exactly_the_dynamodb_calls_the_keys_cli_makes() {
        let endpoint = support::dynamodb::endpoint().await;
        let proxy = Proxy::start(endpoint).await;
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let _tables = support::dynamodb::open(&prefix).await;
        let store_url = format!("dynamodb://{prefix}");
        let run = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_triggers-api"));
            cmd.args(&args)
                .env("AWS_ENDPOINT_URL", &proxy.url)
                .env("TRIGGERS_STORE", &store_url)
                .env("TRIGGERS_BCRYPT_COST", "4");
            async move {
                let out = cmd.output().await.expect("run triggers-api");
                assert!(
                    out.status.success(),
                    "triggers-api {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        // Every `keys` subcommand.
        let created = run(&[
            "keys",
            "create",
            "--account",
            "acme",
            "--email",
            "ops@acme.example",
            "--role",
            "creator",
            "--json",
        ])
        .await;
        let created: Value = serde_json::from_str(&created).expect("JSON");
        let key_id = created["key_id"].as_str().expect("key_id").to_owned();
        run(&["keys", "list", "--json"]).await;
        run(&["keys", "list", "--account", "acme"]).await;
        run(&["keys", "set-rate-limit", &key_id, "10"]).await;
        run(&["keys", "set-status", &key_id, "inactive"]).await;
        run(&["keys", "revoke", &key_id]).await;
        run(&["keys", "revoke", "--email", "ops@acme.example"]).await;
        let recorded = proxy.take();
        assert!(operation_counts(&recorded).contains_key("Scan"));

        let t = Template::load(&prefix);
        let policies = t.of_type("AWS::IAM::ManagedPolicy");
        let (_, admin) = policies
            .iter()
            .find(|(id, _)| *id == "KeysAdminPolicy")
            .expect("KeysAdminPolicy in the template");
        if let Err(diff) = compare_grants(
            "KeysAdminPolicy against the keys CLI",
            &union(&recorded),
            &t.dynamodb_grants(&admin["Properties"]["PolicyDocument"]),
        ) {
            panic!("{diff}");
        }
    }
}
