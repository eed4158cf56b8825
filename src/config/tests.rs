//! Unit tests of the endpoint-file validator: every rule, with the exact message, line and
//! column of each diagnostic (1-based, as `scoregate check` prints them).

use super::*;

const NAME_RULE: &str =
    "is invalid: use 3 to 32 characters, lowercase letters, digits and `-`, starting with a letter";
const TOP_EXPECTED: &str = "expected one of: name, listen, admin_listen, pin_header, \
    sticky_header, traffic, mirror_traffic, mirror_compare, auth_mode, keys_file, max_request_body_bytes, client_header_timeout_ms, dns_refresh_ms, tls, admin_tls, access_log, otlp_endpoint, deployments";
const AML_TOKEN_WARNING: &str = "WARNING: auth_mode `aml_token` is NOT enforced by scoregate: \
    this endpoint is OPEN to anyone who can reach it (use `auth_mode: key` with a `keys_file`, \
    or `none` to silence this warning)";

/// One blue deployment at 100%, to append to files that test top-level keys.
const BLUE: &str = "traffic:
  blue: 100
deployments:
  blue:
    instances: [127.0.0.1:9001]
";

/// Blue and green with one instance each and no `traffic:`, to append to a `traffic:` map.
const BLUE_GREEN: &str = "deployments:
  blue:
    instances: [127.0.0.1:9001]
  green:
    instances: [127.0.0.1:9101]
";

fn d(line: usize, column: usize, message: &str) -> Diagnostic {
    Diagnostic {
        line,
        column,
        message: message.to_string(),
    }
}

fn parse(src: &str) -> Result<Loaded, ConfigError> {
    parse_str(src, Path::new("t.yaml"))
}

/// Every error of a file that must be refused.
fn errors(src: &str) -> Vec<Diagnostic> {
    match parse(src) {
        Ok(l) => panic!("expected errors, the file was accepted: {:#?}", l.config),
        Err(e) => {
            assert_eq!(e.path, Path::new("t.yaml"));
            assert!(!e.errors.is_empty(), "refused without any error");
            e.errors
        }
    }
}

/// A file that must be accepted.
fn valid(src: &str) -> Loaded {
    parse(src).unwrap_or_else(|e| panic!("expected a valid file, got:\n{e}"))
}

/// A file that must be accepted without any warning.
fn clean(src: &str) -> EndpointConfig {
    let l = valid(src);
    assert_eq!(l.warnings, vec![], "unexpected warnings");
    assert_eq!(l.source, src);
    l.config
}

fn weights(c: &EndpointConfig) -> Vec<(&str, u8)> {
    c.deployments
        .iter()
        .map(|d| (d.name.as_str(), d.weight))
        .collect()
}

/// A file whose only deployment `blue` has these instances (a block list starting on line 6, so
/// the instance at index i is at line 6 + i, column 9).
fn with_instances(instances: &[&str]) -> String {
    let mut s = String::from("traffic:\n  blue: 100\ndeployments:\n  blue:\n    instances:\n");
    for i in instances {
        s.push_str(&format!("      - \"{i}\"\n"));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Whole-file shape.

#[test]
fn empty_file_is_refused() {
    for src in ["", "   \n\n", "\t\n"] {
        assert_eq!(errors(src), vec![d(1, 1, "the file is empty")], "{src:?}");
    }
}

#[test]
fn yaml_syntax_error_is_reported_at_its_position() {
    // The messages and positions are saphyr-parser's (they were libyaml's with serde_yaml).
    assert_eq!(
        errors("name: a: b\n"),
        vec![d(1, 8, "mapping values are not allowed in this context")]
    );
    assert_eq!(
        errors("traffic:\n\tblue: 100\n"),
        vec![d(
            2,
            2,
            "tabs disallowed within this context (block indentation)"
        )]
    );
    // An unclosed flow list: reported where the parser gave up.
    assert_eq!(
        errors("deployments:\n  blue:\n    instances: [127.0.0.1:9001\n"),
        vec![d(
            4,
            1,
            "while parsing a flow sequence, expected ',' or ']'"
        )]
    );
    // An unclosed quoted scalar: reported where it starts.
    assert_eq!(
        errors("name: \"abc\n"),
        vec![d(
            1,
            7,
            "while scanning a quoted scalar, found unexpected end of stream"
        )]
    );
    // A syntax error leaves no tree: it is the only error reported, even after others.
    assert_eq!(
        errors("zzz: 1\ntraffic:\n  blue: 101\nname: a: b\n"),
        vec![d(4, 8, "mapping values are not allowed in this context")]
    );
}

#[test]
fn unreadable_file_is_reported() {
    let path = Path::new("/nonexistent-scoregate-dir/endpoint.yaml");
    let e = load_file(path).expect_err("a missing file must be refused");
    assert_eq!(e.path, path);
    assert_eq!(e.errors.len(), 1);
    assert_eq!((e.errors[0].line, e.errors[0].column), (1, 1));
    assert!(
        e.errors[0].message.starts_with("cannot read the file: "),
        "{:?}",
        e.errors
    );
}

#[test]
fn errors_display_as_path_line_column_message() {
    let e = parse_str(
        "listen: nope\nauth_mode: weird\n",
        Path::new("config/x.yaml"),
    )
    .expect_err("invalid");
    assert_eq!(
        e.to_string(),
        "config/x.yaml:1:1: listen `nope` is not an address: write IP:PORT, like 127.0.0.1:8080\n\
         config/x.yaml:1:1: `deployments` is missing: name at least one deployment with its \
         `instances`\n\
         config/x.yaml:2:1: auth_mode `weird` is not known: use `none` or `key`"
    );
}

#[test]
fn top_level_must_be_a_mapping() {
    assert_eq!(
        errors("- blue\n- green\n"),
        vec![d(
            1,
            1,
            "invalid type: sequence, expected an endpoint file: a mapping with `traffic:` and \
             `deployments:`"
        )]
    );
    assert_eq!(
        errors("hello\n"),
        vec![d(
            1,
            1,
            "invalid type: string \"hello\", expected an endpoint file: a mapping with \
             `traffic:` and `deployments:`"
        )]
    );
}

// ---------------------------------------------------------------------------------------------
// Unknown and duplicate keys.

#[test]
fn unknown_top_level_key_with_suggestion() {
    let src =
        "name: x\ntraffc:\n  blue: 100\ndeployments:\n  blue:\n    instances: [127.0.0.1:9001]\n";
    assert_eq!(
        errors(src),
        vec![d(
            2,
            1,
            "unknown key `traffc` in the endpoint file (did you mean `traffic`?)"
        )]
    );
    let src = "traffic:\n  blue: 100\ndeployment:\n  blue:\n    instances: [127.0.0.1:9001]\n";
    assert_eq!(
        errors(src),
        vec![d(
            3,
            1,
            "unknown key `deployment` in the endpoint file (did you mean `deployments`?)"
        )]
    );
}

#[test]
fn unknown_top_level_key_without_suggestion() {
    let src = format!("name: x\nzzzzzz: 1\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            &format!("unknown key `zzzzzz` in the endpoint file; {TOP_EXPECTED}")
        )]
    );
}

#[test]
fn unknown_deployment_key_with_suggestion() {
    let src = "deployments:\n  blue:\n    instance: [127.0.0.1:9001]\n";
    assert_eq!(
        errors(src),
        vec![d(
            3,
            5,
            "deployments.blue: unknown key `instance` in a deployment (did you mean `instances`?)"
        )]
    );
}

#[test]
fn unknown_deployment_key_without_suggestion() {
    let src = "deployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    replicas: 3\n";
    assert_eq!(
        errors(src),
        vec![d(
            4,
            5,
            "deployments.blue: unknown key `replicas` in a deployment; expected one of: \
             instances, grpc_instances, request, request_settings, tls, headers, bearer_key_file"
        )]
    );
}

#[test]
fn unknown_request_key_with_suggestion() {
    let src = "deployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    request:\n      \
               request_timeout: 100\n";
    assert_eq!(
        errors(src),
        vec![d(
            5,
            7,
            "deployments.blue.request: unknown key `request_timeout` in request settings \
             (did you mean `request_timeout_ms`?)"
        )]
    );
    // The same under the synonym, with its own name in the path.
    let src = "deployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    request_settings:\n      \
               max_queue_wait: 1\n";
    assert_eq!(
        errors(src),
        vec![d(
            5,
            7,
            "deployments.blue.request_settings: unknown key `max_queue_wait` in request settings \
             (did you mean `max_queue_wait_ms`?)"
        )]
    );
}

#[test]
fn unknown_request_key_without_suggestion() {
    // Azure keys are not ignored inside `request`: only at the top and in a deployment.
    let src = "deployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    request:\n      \
               model: x\n";
    assert_eq!(
        errors(src),
        vec![d(
            5,
            7,
            "deployments.blue.request: unknown key `model` in request settings; expected one of: \
             request_timeout_ms, max_concurrent_requests_per_instance, max_queue_wait_ms"
        )]
    );
}

#[test]
fn duplicate_top_level_key() {
    let src = format!("name: a\n{BLUE}name: b\n");
    assert_eq!(
        errors(&src),
        vec![d(7, 1, "duplicate key `name` in the endpoint file")]
    );
}

#[test]
fn duplicate_name_in_traffic() {
    let src = format!("traffic:\n  blue: 50\n  blue: 50\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            3,
            3,
            "traffic: deployment `blue` appears twice in `traffic`"
        )]
    );
}

#[test]
fn duplicate_deployment() {
    let src = "deployments:\n  blue:\n    instances: [127.0.0.1:9001]\n  blue:\n    \
               instances: [127.0.0.1:9002]\n";
    assert_eq!(
        errors(src),
        vec![d(
            4,
            3,
            "deployments: deployment `blue` appears twice in `deployments`"
        )]
    );
}

#[test]
fn duplicate_key_in_a_deployment_and_in_request() {
    let src =
        "deployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    instances: [127.0.0.1:9002]\n";
    assert_eq!(
        errors(src),
        vec![d(
            4,
            5,
            "deployments.blue: duplicate key `instances` in a deployment"
        )]
    );
    let src = "deployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    request:\n      \
               max_queue_wait_ms: 1\n      max_queue_wait_ms: 2\n";
    assert_eq!(
        errors(src),
        vec![d(
            6,
            7,
            "deployments.blue.request: duplicate key `max_queue_wait_ms` in request settings"
        )]
    );
}

const BOTH_REQUEST_KEYS: &str = "traffic:
  blue: 100
deployments:
  blue:
    instances: [127.0.0.1:9001]
    request:
      request_timeout_ms: 1
    request_settings:
      request_timeout_ms: 2
";

#[test]
fn request_and_request_settings_together_are_refused() {
    let msg = "deployments.blue: `request` and `request_settings` are the same setting: keep one";
    // Reported at the second of the two keys, whichever comes first.
    assert_eq!(errors(BOTH_REQUEST_KEYS), vec![d(8, 5, msg)]);
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    \
               request_settings: {}\n    sku: x\n    request: {}\n";
    assert_eq!(errors(src), vec![d(8, 5, msg)]);
}

// ---------------------------------------------------------------------------------------------
// Deployments.

#[test]
fn missing_deployments() {
    let msg = "`deployments` is missing: name at least one deployment with its `instances`";
    assert_eq!(errors("name: x\n"), vec![d(1, 1, msg)]);
    // A file of comments only is not empty, it has no deployments.
    assert_eq!(errors("# nothing yet\n"), vec![d(1, 1, msg)]);
    // `traffic` naming a deployment is not an error on top of the missing `deployments`.
    assert_eq!(errors("traffic:\n  blue: 100\n"), vec![d(1, 1, msg)]);
}

#[test]
fn empty_deployments() {
    let msg = "`deployments` is empty: name at least one deployment with its `instances`";
    assert_eq!(errors("name: x\ndeployments: {}\n"), vec![d(2, 1, msg)]);
    assert_eq!(errors("name: x\ndeployments:\n"), vec![d(2, 1, msg)]);
}

#[test]
fn invalid_deployment_names() {
    for name in [
        "ab",                                // too short
        "abcdefghijklmnopqrstuvwxyz0123456", // 33 characters
        "Blue",                              // uppercase
        "1blue",                             // starts with a digit
        "-blue",                             // starts with `-`
        "blue_green",                        // underscore
        "blue.v2",                           // dot
    ] {
        let src = format!("deployments:\n  {name}:\n    instances: [127.0.0.1:9001]\n");
        assert_eq!(
            errors(&src),
            vec![d(2, 3, &format!("deployment name `{name}` {NAME_RULE}"))],
            "{name}"
        );
    }
    assert_eq!("abcdefghijklmnopqrstuvwxyz0123456".len(), 33);
}

#[test]
fn valid_deployment_names_at_the_edges() {
    let long = "abcdefghijklmnopqrstuvwxyz-12345";
    assert_eq!(long.len(), 32);
    for name in ["abc", long, "a1-b2", "model-v2"] {
        let src = format!(
            "traffic:\n  {name}: 100\ndeployments:\n  {name}:\n    instances: [127.0.0.1:9001]\n"
        );
        let c = clean(&src);
        assert_eq!(weights(&c), vec![(name, 100)]);
    }
}

#[test]
fn deployment_without_instances() {
    let src =
        "traffic:\n  blue: 100\ndeployments:\n  blue:\n    request:\n      request_timeout_ms: 3\n";
    let msg = "deployment `blue` has no `instances`: list its scoring servers as host:port";
    assert_eq!(errors(src), vec![d(4, 3, msg)]);
    // A deployment with nothing at all under it.
    assert_eq!(
        errors("traffic:\n  blue: 100\ndeployments:\n  blue:\n"),
        vec![d(4, 3, msg)]
    );
}

#[test]
fn deployment_with_an_empty_instance_list() {
    let msg = "deployment `blue` has an empty `instances` list";
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue:\n    instances: []\n";
    assert_eq!(errors(src), vec![d(5, 5, msg)]);
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue:\n    instances:\n";
    assert_eq!(errors(src), vec![d(5, 5, msg)]);
}

// ---------------------------------------------------------------------------------------------
// Traffic.

#[test]
fn weight_written_as_a_string_is_refused() {
    let src = format!("traffic:\n  blue: \"90\"\n  green: 10\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            9,
            "traffic.blue: weight \"90\" is a string: write weights as plain integers (90, not \"90\")"
        )]
    );
}

#[test]
fn weight_written_as_a_float_is_refused() {
    let src = format!("traffic:\n  blue: 90.5\n  green: 10\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            9,
            "traffic.blue: weight 90.5 is not an integer: weights are whole percentages from 0 to 100"
        )]
    );
    let src = format!("traffic:\n  blue: 90.0\n  green: 10\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            9,
            "traffic.blue: weight 90 is not an integer: weights are whole percentages from 0 to 100"
        )]
    );
}

#[test]
fn weight_out_of_range_is_refused() {
    // Out-of-range weights are reported at the name, and the sum is not checked on top.
    let src = format!("traffic:\n  blue: 101\n  green: 0\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            3,
            "weight 101 of `blue` is out of range: weights are 0 to 100"
        )]
    );
    let src = format!("traffic:\n  blue: 100\n  green: -1\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            3,
            3,
            "weight -1 of `green` is out of range: weights are 0 to 100"
        )]
    );
}

#[test]
fn weights_must_sum_to_100() {
    let src = format!("name: x\ntraffic:\n  blue: 90\n  green: 20\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "traffic weights sum to 110 (blue=90 + green=20); they must sum to exactly 100, or all be 0"
        )]
    );
    let src = format!("traffic:\n  blue: 50\n  green: 49\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            1,
            1,
            "traffic weights sum to 99 (blue=50 + green=49); they must sum to exactly 100, or all be 0"
        )]
    );
}

#[test]
fn all_zero_traffic_is_valid_with_a_warning() {
    let src = format!("name: x\ntraffic:\n  blue: 0\n  green: 0\n{BLUE_GREEN}");
    let l = valid(&src);
    assert_eq!(
        l.warnings,
        vec![d(
            2,
            1,
            "no deployment takes traffic: unpinned requests get 503, pinned ones are served"
        )]
    );
    assert_eq!(weights(&l.config), vec![("blue", 0), ("green", 0)]);
    assert_eq!(l.config.total_weight(), 0);
}

#[test]
fn deployment_not_named_in_traffic_has_weight_0() {
    let src = format!("traffic:\n  green: 100\n{BLUE_GREEN}");
    let c = clean(&src);
    assert_eq!(weights(&c), vec![("green", 100), ("blue", 0)]);
    assert_eq!(c.total_weight(), 100);
}

#[test]
fn traffic_naming_a_missing_deployment_is_refused() {
    let src = format!("traffic:\n  blue: 90\n  purple: 10\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            3,
            3,
            "`traffic` names `purple`, which is not a deployment (deployments: blue, green)"
        )]
    );
}

// ---------------------------------------------------------------------------------------------
// Instances.

#[test]
fn instance_without_port() {
    assert_eq!(
        errors(&with_instances(&["127.0.0.1:9000", "127.0.0.1"])),
        vec![d(
            7,
            9,
            "instance `127.0.0.1`: expected host:port, like 127.0.0.1:9001"
        )]
    );
    // An unquoted number is read as text and refused the same way.
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue:\n    instances: [9001]\n";
    assert_eq!(
        errors(src),
        vec![d(
            5,
            17,
            "instance `9001`: expected host:port, like 127.0.0.1:9001"
        )]
    );
}

#[test]
fn instance_with_a_bad_port() {
    for port in ["0", "70000", "http", ""] {
        let inst = format!("127.0.0.1:{port}");
        assert_eq!(
            errors(&with_instances(&[inst.as_str()])),
            vec![d(
                6,
                9,
                &format!("instance `{inst}`: port `{port}` is not a number from 1 to 65535")
            )],
            "{inst}"
        );
    }
    let c = clean(&with_instances(&["127.0.0.1:1", "127.0.0.1:65535"]));
    assert_eq!(
        c.deployments[0].instances,
        ["127.0.0.1:1", "127.0.0.1:65535"]
    );
}

#[test]
fn ipv6_instance_in_brackets_is_valid() {
    let c = clean(&with_instances(&["[::1]:9001", "[2001:db8::7]:80"]));
    assert_eq!(
        c.deployments[0].instances,
        ["[::1]:9001", "[2001:db8::7]:80"]
    );
}

#[test]
fn ipv6_instance_without_brackets_is_refused() {
    assert_eq!(
        errors(&with_instances(&["::1:9001"])),
        vec![d(
            6,
            9,
            "instance `::1:9001`: an IPv6 instance is written [address]:port"
        )]
    );
    assert_eq!(
        errors(&with_instances(&["[::1]"])),
        vec![d(
            6,
            9,
            "instance `[::1]`: an IPv6 instance is written [address]:port"
        )]
    );
    assert_eq!(
        errors(&with_instances(&["[zz]:80"])),
        vec![d(6, 9, "instance `[zz]:80`: `zz` is not an IPv6 address")]
    );
}

#[test]
fn dns_name_instances_are_valid() {
    let c = clean(&with_instances(&[
        "scorer-1.svc.cluster.local:80",
        "localhost:9001",
        "Scorer.Example.COM:443",
    ]));
    assert_eq!(
        c.deployments[0].instances,
        [
            "scorer-1.svc.cluster.local:80",
            "localhost:9001",
            "Scorer.Example.COM:443"
        ]
    );
}

#[test]
fn instance_with_invalid_host_characters() {
    for host in [
        "bad_host",
        "a..b",
        "-scorer.local",
        "scorer-.local",
        "h st",
        "scörer",
    ] {
        let inst = format!("{host}:80");
        assert_eq!(
            errors(&with_instances(&[inst.as_str()])),
            vec![d(
                6,
                9,
                &format!("instance `{inst}`: `{host}` is not an IP address or a DNS name")
            )],
            "{inst}"
        );
    }
    assert_eq!(
        errors(&with_instances(&[":80"])),
        vec![d(6, 9, "instance `:80`: the host is missing")]
    );
}

#[test]
fn mistyped_ipv4_address_is_not_a_dns_name() {
    for host in ["300.1.1.1", "10.0.0"] {
        let inst = format!("{host}:80");
        assert_eq!(
            errors(&with_instances(&[inst.as_str()])),
            vec![d(
                6,
                9,
                &format!("instance `{inst}`: `{host}` is not an IP address or a DNS name")
            )],
            "{inst}"
        );
    }
}

#[test]
fn instance_listed_twice() {
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue:\n    \
               instances: [127.0.0.1:9001, 127.0.0.1:9002, 127.0.0.1:9001]\n";
    assert_eq!(
        errors(src),
        vec![d(
            5,
            49,
            "instance `127.0.0.1:9001` is listed twice in deployment `blue`"
        )]
    );
    // The same instance in two deployments is allowed.
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue:\n    instances: [127.0.0.1:9001]\n  \
               green:\n    instances: [127.0.0.1:9001]\n";
    clean(src);
}

// ---------------------------------------------------------------------------------------------
// Settings.

#[test]
fn request_timeout_of_0_is_refused() {
    let msg = "request_timeout_ms must be at least 1";
    let src = format!("{BLUE}    request:\n      request_timeout_ms: 0\n");
    assert_eq!(errors(&src), vec![d(7, 7, msg)]);
    let src = format!(
        "{BLUE}    request_settings:\n      max_queue_wait_ms: 1\n      request_timeout_ms: 0\n"
    );
    assert_eq!(errors(&src), vec![d(8, 7, msg)]);
}

#[test]
fn invalid_listen_addresses() {
    let src = format!("name: x\nlisten: localhost:8080\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "listen `localhost:8080` is not an address: write IP:PORT, like 127.0.0.1:8080"
        )]
    );
    let src = format!("name: x\nlisten: 8080\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "listen `8080` is not an address: write IP:PORT, like 127.0.0.1:8080"
        )]
    );
    let src = format!("name: x\nadmin_listen: 127.0.0.1\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "admin_listen `127.0.0.1` is not an address: write IP:PORT, like 127.0.0.1:8080"
        )]
    );
}

#[test]
fn listen_and_admin_listen_must_differ() {
    let src = format!("listen: 127.0.0.1:7000\nadmin_listen: 127.0.0.1:7000\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "admin_listen 127.0.0.1:7000 and listen 127.0.0.1:7000 cannot both be bound: use another port"
        )]
    );
    // Against the default `listen`.
    let src = format!("name: x\nadmin_listen: 127.0.0.1:8080\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "admin_listen 127.0.0.1:8080 and listen 127.0.0.1:8080 cannot both be bound: use another port"
        )]
    );
    // The unspecified address overlaps every address on that port.
    let src = format!("listen: 0.0.0.0:8080\nadmin_listen: 127.0.0.1:8080\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "admin_listen 127.0.0.1:8080 and listen 0.0.0.0:8080 cannot both be bound: use another port"
        )]
    );
    // Port 0 (any free port) on both is not a clash.
    let c = clean(&format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{BLUE}"
    ));
    assert_eq!(c.listen, c.admin_listen);
    // IPv6 listeners.
    let c = clean(&format!(
        "listen: \"[::1]:8080\"\nadmin_listen: \"[::1]:9090\"\n{BLUE}"
    ));
    assert_eq!(c.listen, "[::1]:8080".parse::<SocketAddr>().unwrap());
}

#[test]
fn invalid_pin_header() {
    let src = format!("name: x\npin_header: x api\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "pin_header `x api` is not a valid HTTP header name"
        )]
    );
    let src = format!("name: x\npin_header: ''\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(2, 1, "pin_header `` is not a valid HTTP header name")]
    );
    // A valid one is used, lowercased as HTTP header names are.
    let c = clean(&format!("pin_header: X-Model-Version\n{BLUE}"));
    assert_eq!(c.pin_header.as_str(), "x-model-version");
}

#[test]
fn sticky_header_is_read() {
    let c = clean(&format!("name: x\nsticky_header: x-user-id\n{BLUE}"));
    assert_eq!(c.sticky_header, Some(HeaderName::from_static("x-user-id")));
    // Lowercased as HTTP header names are.
    let c = clean(&format!("sticky_header: X-User-Id\n{BLUE}"));
    assert_eq!(
        c.sticky_header.as_ref().map(HeaderName::as_str),
        Some("x-user-id")
    );
    // The default is none.
    assert_eq!(clean(BLUE).sticky_header, None);
}

#[test]
fn invalid_sticky_header() {
    let src = format!("name: x\nsticky_header: x user\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "sticky_header `x user` is not a valid HTTP header name"
        )]
    );
    let src = format!("name: x\nsticky_header: ''\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(2, 1, "sticky_header `` is not a valid HTTP header name")]
    );
    let src = format!("name: x\nsticky_header: \"x-user:id\"\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "sticky_header `x-user:id` is not a valid HTTP header name"
        )]
    );
}

#[test]
fn sticky_header_must_differ_from_the_pin_header() {
    // The default pin header, in any case.
    for h in ["x-api-version", "X-API-Version"] {
        let src = format!("name: x\nsticky_header: {h}\n{BLUE}");
        assert_eq!(
            errors(&src),
            vec![d(
                2,
                1,
                &format!("sticky_header `{h}` is the pin header: use another header")
            )],
            "{h}"
        );
    }
    // A custom pin header, whichever of the two keys comes first.
    let src = format!("pin_header: x-model\nsticky_header: X-Model\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "sticky_header `X-Model` is the pin header: use another header"
        )]
    );
    let src = format!("name: x\nsticky_header: x-model\npin_header: x-model\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "sticky_header `x-model` is the pin header: use another header"
        )]
    );
    // With a custom pin header, the default one is free for stickiness.
    let c = clean(&format!(
        "pin_header: x-model\nsticky_header: x-api-version\n{BLUE}"
    ));
    assert_eq!(c.pin_header.as_str(), "x-model");
    assert_eq!(
        c.sticky_header,
        Some(HeaderName::from_static("x-api-version"))
    );
}

#[test]
fn mirror_traffic_is_read() {
    for percent in [1, 10, 50, 100] {
        let src =
            format!("traffic:\n  blue: 100\nmirror_traffic:\n  green: {percent}\n{BLUE_GREEN}");
        let c = clean(&src);
        assert_eq!(
            c.mirrors,
            vec![MirrorConfig {
                deployment: "green".into(),
                percent,
            }],
            "{percent}"
        );
        assert_eq!(weights(&c), vec![("blue", 100), ("green", 0)]);
    }
    // A deployment named in `traffic` at 0 may be mirrored to.
    let src =
        format!("traffic:\n  blue: 100\n  green: 0\nmirror_traffic: {{green: 25}}\n{BLUE_GREEN}");
    assert_eq!(
        clean(&src).mirrors,
        vec![MirrorConfig {
            deployment: "green".into(),
            percent: 25,
        }]
    );
    // The default is none.
    assert_eq!(clean(BLUE).mirrors, vec![]);
}

#[test]
fn mirror_traffic_of_0_percent_is_no_mirror() {
    let src = format!("traffic:\n  blue: 100\nmirror_traffic:\n  green: 0\n{BLUE_GREEN}");
    assert_eq!(clean(&src).mirrors, vec![]);
    // An empty map too.
    let src = format!("traffic:\n  blue: 100\nmirror_traffic: {{}}\n{BLUE_GREEN}");
    assert_eq!(clean(&src).mirrors, vec![]);
}

#[test]
fn mirror_traffic_to_three_deployments_is_read_and_to_four_refused() {
    let deployments = "deployments:
  blue:
    instances: [127.0.0.1:9001]
  green:
    instances: [127.0.0.1:9101]
  red:
    instances: [127.0.0.1:9201]
  teal:
    instances: [127.0.0.1:9301]
  gray:
    instances: [127.0.0.1:9401]
";
    let three = format!(
        "traffic:\n  blue: 100\nmirror_traffic:\n  green: 10\n  red: 100\n  teal: 5\n{deployments}"
    );
    let got: Vec<(String, u8)> = clean(&three)
        .mirrors
        .into_iter()
        .map(|m| (m.deployment, m.percent))
        .collect();
    assert_eq!(
        got,
        vec![
            ("green".to_string(), 10),
            ("red".to_string(), 100),
            ("teal".to_string(), 5)
        ]
    );
    let four = three.replace("  teal: 5\n", "  teal: 5\n  gray: 1\n");
    assert_eq!(
        errors(&four),
        vec![d(
            3,
            1,
            "mirror_traffic names 4 deployments: mirror to 3 at most"
        )]
    );
}

#[test]
fn mirror_compare_is_read_with_its_defaults_and_checked() {
    let src = format!(
        "traffic:\n  blue: 100\nmirror_traffic: {{green: 20}}\nmirror_compare:\n  abs_tolerance: 1e-3\n  rel_tolerance: 0\n  ignore: [/model_version, /id]\n  max_body_bytes: 2048\n{BLUE_GREEN}"
    );
    let c = clean(&src);
    let cmp = c.mirror_compare.unwrap();
    assert_eq!((cmp.abs_tolerance, cmp.rel_tolerance), (1e-3, 0.0));
    assert_eq!(cmp.ignore, vec!["/model_version", "/id"]);
    assert_eq!((cmp.max_body_bytes, c.mirror_max_body_bytes), (2048, 2048));
    let defaults = clean(&format!(
        "traffic:\n  blue: 100\nmirror_traffic: {{green: 20}}\nmirror_compare: {{}}\n{BLUE_GREEN}"
    ));
    let cmp = defaults.mirror_compare.unwrap();
    assert_eq!((cmp.abs_tolerance, cmp.rel_tolerance), (1e-6, 1e-4));
    assert_eq!(cmp.max_body_bytes, 1024 * 1024);
    assert_eq!(defaults.mirror_max_body_bytes, 16 * 1024 * 1024);
    let bad = format!(
        "traffic:\n  blue: 100\nmirror_traffic: {{green: 20}}\nmirror_compare:\n  abs_tolerance: -1\n  ignore: [model_version]\n  max_body_bytes: 0\n  tolerance: 1\n{BLUE_GREEN}"
    );
    assert_eq!(
        errors(&bad),
        vec![
            d(
                5,
                18,
                "mirror_compare.abs_tolerance: invalid type: integer `-1`, expected a number, 0 or more"
            ),
            d(
                6,
                12,
                "mirror_compare.ignore: `model_version` is not a JSON pointer (they start with `/`, like /model_version)"
            ),
            d(7, 3, "mirror_compare.max_body_bytes must be at least 1"),
            d(
                8,
                3,
                "mirror_compare: unknown key `tolerance` in mirror_compare; expected one of: abs_tolerance, rel_tolerance, ignore, max_body_bytes"
            ),
        ]
    );
}

#[test]
fn mirror_percentage_out_of_range_is_refused() {
    // Reported at the name, like an out-of-range weight.
    for percent in [101, -1, 1000] {
        let src =
            format!("traffic:\n  blue: 100\nmirror_traffic:\n  green: {percent}\n{BLUE_GREEN}");
        assert_eq!(
            errors(&src),
            vec![d(
                4,
                3,
                &format!("mirror percentage {percent} of `green` is out of range: 0 to 100")
            )],
            "{percent}"
        );
    }
}

#[test]
fn mirror_to_a_deployment_with_live_weight_is_refused() {
    let src =
        format!("traffic:\n  blue: 90\n  green: 10\nmirror_traffic:\n  green: 10\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            5,
            3,
            "`green` takes 10% of live traffic: a mirror must be a deployment at 0% live weight"
        )]
    );
    // Even at 0%: the file names a live deployment as its mirror.
    let src = format!("mirror_traffic:\n  blue: 0\ntraffic:\n  blue: 100\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            3,
            "`blue` takes 100% of live traffic: a mirror must be a deployment at 0% live weight"
        )]
    );
}

#[test]
fn mirror_to_an_unknown_deployment_is_refused() {
    let src = format!("traffic:\n  blue: 100\nmirror_traffic:\n  purple: 10\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            4,
            3,
            "`mirror_traffic` names `purple`, which is not a deployment (deployments: blue, green)"
        )]
    );
    // Not an error on top of the missing `deployments`.
    assert_eq!(
        errors("traffic:\n  blue: 100\nmirror_traffic:\n  green: 10\n"),
        vec![d(
            1,
            1,
            "`deployments` is missing: name at least one deployment with its `instances`"
        )]
    );
}

#[test]
fn mirror_percentage_written_as_a_string_is_refused() {
    // A repeated name is reported as repeated in `mirror_traffic`.
    let src =
        format!("traffic:\n  blue: 100\nmirror_traffic:\n  green: 10\n  green: 10\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            5,
            3,
            "mirror_traffic: deployment `green` appears twice in `mirror_traffic`"
        )]
    );
    // A byte-order mark at the start of a keys file is not part of the first key.
    assert_eq!(parse_keys("\u{feff}k1\n"), vec![sha256(b"k1")]);
    let src = format!("traffic:\n  blue: 100\nmirror_traffic:\n  green: \"10\"\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            4,
            10,
            "mirror_traffic.green: mirror percentage \"10\" is a string: write mirror percentages \
             as plain integers (10, not \"10\")"
        )]
    );
    let src = format!("traffic:\n  blue: 100\nmirror_traffic:\n  green: 2.5\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            4,
            10,
            "mirror_traffic.green: mirror percentage 2.5 is not an integer: mirror percentages are \
             whole percentages from 0 to 100"
        )]
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication.

/// `auth_mode: key` with this `keys_file`, then [`BLUE`]: `auth_mode` on line 2, `keys_file` on
/// line 3.
fn with_keys_file(keys_file: &str) -> String {
    format!("name: x\nauth_mode: key\nkeys_file: {keys_file}\n{BLUE}")
}

/// Parses `src` as `endpoint.yaml` in `dir`, so that a relative `keys_file` resolves there.
fn parse_in(dir: &Path, src: &str) -> Result<Loaded, ConfigError> {
    parse_str(src, &dir.join("endpoint.yaml"))
}

/// Every error of a file of `dir` that must be refused.
fn errors_in(dir: &Path, src: &str) -> Vec<Diagnostic> {
    match parse_in(dir, src) {
        Ok(l) => panic!("expected errors, the file was accepted: {:#?}", l.config),
        Err(e) => {
            assert_eq!(e.path, dir.join("endpoint.yaml"));
            e.errors
        }
    }
}

/// A file of `dir` that must be accepted without any warning.
fn clean_in(dir: &Path, src: &str) -> Loaded {
    let l = parse_in(dir, src).unwrap_or_else(|e| panic!("expected a valid file, got:\n{e}"));
    assert_eq!(l.warnings, vec![], "unexpected warnings");
    assert_eq!(l.source, src);
    l
}

fn keys_of(c: &EndpointConfig) -> &Keys {
    match &c.auth {
        Auth::Key(k) => k,
        Auth::None => panic!("expected auth_mode key, got none"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn auth_mode_key_without_keys_file_is_refused() {
    let src = format!("name: x\nauth_mode: key\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "auth_mode `key` needs `keys_file`: a file with one key per line"
        )]
    );
}

#[test]
fn auth_mode_key_with_a_missing_keys_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.txt");
    let why = std::fs::read_to_string(&path).expect_err("no such file");
    assert_eq!(
        errors_in(dir.path(), &with_keys_file("missing.txt")),
        vec![d(
            3,
            1,
            &format!("keys_file `{}` cannot be read: {why}", path.display())
        )]
    );
    // A directory is not a keys file.
    std::fs::create_dir(dir.path().join("keys.d")).unwrap();
    let errs = errors_in(dir.path(), &with_keys_file("keys.d"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (3, 1));
    let prefix = format!(
        "keys_file `{}` cannot be read: ",
        dir.path().join("keys.d").display()
    );
    assert!(errs[0].message.starts_with(&prefix), "{errs:?}");
}

#[test]
fn auth_mode_key_with_a_keys_file_without_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.txt");
    let msg = format!(
        "keys_file `{}` holds no key (one key per line; `#` starts a comment)",
        path.display()
    );
    for text in [
        "",
        "\n\n",
        "   \n\t\n",
        "# keys of the endpoint\n\n  # none yet\n",
        "#a\r\n \r\n",
    ] {
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            errors_in(dir.path(), &with_keys_file("keys.txt")),
            vec![d(3, 1, &msg)],
            "{text:?}"
        );
    }
}

#[test]
fn auth_mode_key_reads_the_keys_as_digests() {
    let dir = tempfile::tempdir().unwrap();
    let text = "# keys of the endpoint\n  s3cr3t-alpha  \n\n\ts3cr3t-beta\r\n   # old: s3cr3t-gamma\n\
                s3cr3t-delta";
    std::fs::write(dir.path().join("keys.txt"), text).unwrap();
    let l = clean_in(dir.path(), &with_keys_file("keys.txt"));
    let k = keys_of(&l.config);
    assert_eq!(k.file, dir.path().join("keys.txt"));
    assert_eq!(
        k.digests,
        vec![
            sha256(b"s3cr3t-alpha"),
            sha256(b"s3cr3t-beta"),
            sha256(b"s3cr3t-delta"),
        ]
    );
    assert_eq!(k.file_sha256, sha256(text.as_bytes()));
    assert_eq!(parse_keys(text), k.digests);
    // Everything else is as without auth.
    assert_eq!(weights(&l.config), vec![("blue", 100)]);
}

#[test]
fn keys_file_is_relative_to_the_endpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/keys.txt"), "k1\n").unwrap();
    let l = clean_in(dir.path(), &with_keys_file("secrets/keys.txt"));
    let k = keys_of(&l.config);
    assert_eq!(k.file, dir.path().join("secrets").join("keys.txt"));
    assert_eq!(k.digests, vec![sha256(b"k1")]);
    // Not relative to the working directory: the same file name next to another endpoint file
    // is looked up there.
    let other = tempfile::tempdir().unwrap();
    let path = other.path().join("secrets/keys.txt");
    let why = std::fs::read_to_string(&path).expect_err("no such file");
    assert_eq!(
        errors_in(other.path(), &with_keys_file("secrets/keys.txt")),
        vec![d(
            3,
            1,
            &format!("keys_file `{}` cannot be read: {why}", path.display())
        )]
    );
    // An absolute path is used as is.
    let abs = dir.path().join("secrets/keys.txt");
    let l = clean_in(other.path(), &with_keys_file(&abs.display().to_string()));
    assert_eq!(keys_of(&l.config).file, abs);
}

#[test]
fn keys_file_with_auth_mode_aml_token_is_refused() {
    let src = format!("auth_mode: aml_token\nkeys_file: keys.txt\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(2, 1, "`keys_file` is only used with `auth_mode: key`")]
    );
}

#[test]
fn debug_of_the_config_never_shows_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.txt"), "s3cr3t-alpha\ns3cr3t-beta\n").unwrap();
    let l = clean_in(dir.path(), &with_keys_file("keys.txt"));
    let k = keys_of(&l.config).clone();
    for shown in [
        format!("{:?}", l.config),
        format!("{:#?}", l.config),
        format!("{l:?}"),
        format!("{k:?}"),
    ] {
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(!shown.contains("digests"), "{shown}");
        for digest in &k.digests {
            assert!(!shown.contains(&hex(digest)), "{shown}");
            assert!(!shown.contains(&format!("{:?}", &digest[..4])), "{shown}");
        }
    }
    let shown = format!("{k:?}");
    assert!(shown.contains("count: 2"), "{shown}");
    assert!(shown.contains("keys.txt"), "{shown}");
}

#[test]
fn fingerprint_follows_the_keys_file() {
    // Without auth, the fingerprint is the file itself.
    let l = valid(BLUE);
    assert_eq!(l.fingerprint, l.source);
    let l = valid(&format!("auth_mode: none\n{BLUE}"));
    assert_eq!(l.fingerprint, l.source);

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    let src = with_keys_file("keys.txt");
    std::fs::write(&keys, "k1\n").unwrap();
    let a = clean_in(dir.path(), &src);
    assert_ne!(a.fingerprint, a.source);
    assert!(a.fingerprint.starts_with(&src), "{}", a.fingerprint);
    assert!(!a.fingerprint.contains("k1\n"), "{}", a.fingerprint);
    // The same files give the same fingerprint.
    assert_eq!(clean_in(dir.path(), &src).fingerprint, a.fingerprint);
    // Only the keys file changes: the fingerprint does, the source does not.
    std::fs::write(&keys, "k1\nk2\n").unwrap();
    let b = clean_in(dir.path(), &src);
    assert_eq!(b.source, a.source);
    assert_ne!(b.fingerprint, a.fingerprint);
    // Even a change that keeps the same keys (a comment) is noticed.
    std::fs::write(&keys, "# rotated\nk1\nk2\n").unwrap();
    let c = clean_in(dir.path(), &src);
    assert_eq!(keys_of(&c.config).digests, keys_of(&b.config).digests);
    assert_ne!(c.fingerprint, b.fingerprint);
    // Back to the first keys file: the first fingerprint.
    std::fs::write(&keys, "k1\n").unwrap();
    assert_eq!(clean_in(dir.path(), &src).fingerprint, a.fingerprint);
}

#[test]
fn auth_mode_aml_token_is_accepted_with_a_loud_warning() {
    let l = valid(&format!("name: x\nauth_mode: aml_token\n{BLUE}"));
    assert_eq!(l.warnings, vec![d(2, 1, AML_TOKEN_WARNING)]);
    // `none` is accepted silently.
    clean(&format!("name: x\nauth_mode: none\n{BLUE}"));
}

#[test]
fn unknown_auth_mode() {
    let src = format!("name: x\nauth_mode: token\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            1,
            "auth_mode `token` is not known: use `none` or `key`"
        )]
    );
}

#[test]
fn keys_file_without_auth_mode_key() {
    let msg = "`keys_file` is only used with `auth_mode: key`";
    let src = format!("name: x\nkeys_file: /etc/scoregate/keys\n{BLUE}");
    assert_eq!(errors(&src), vec![d(2, 1, msg)]);
    let src = format!("auth_mode: none\nkeys_file: /etc/scoregate/keys\n{BLUE}");
    assert_eq!(errors(&src), vec![d(2, 1, msg)]);
}

#[test]
fn max_request_body_bytes_of_0_is_refused() {
    let src = format!("name: x\nmax_request_body_bytes: 0\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(2, 1, "max_request_body_bytes must be at least 1")]
    );
    let c = clean(&format!("max_request_body_bytes: 1\n{BLUE}"));
    assert_eq!(c.max_request_body_bytes, 1);
}

// ---------------------------------------------------------------------------------------------
// Azure ML keys, several errors, defaults, order.

#[test]
fn azure_keys_warn_once_per_key_name_at_the_first_occurrence() {
    let src = "$schema: http://azureml/sdk-2-0/OnlineEndpoint.json
type: OnlineEndpoint
traffic:
  blue: 50
  green: 50
deployments:
  blue:
    model: aml:models/my-model-m1:1
    sku: Standard_FS4_v2
    instances: [127.0.0.1:9001]
  green:
    model: aml:models/my-model-m2:1
    sku: Standard_FS4_v2
    type: managed
    scale_settings:
      type: default
    instances: [127.0.0.1:9101]
";
    let l = valid(src);
    let ignored = |key: &str| format!("`{key}` is an Azure ML setting that scoregate ignores");
    assert_eq!(
        l.warnings,
        vec![
            d(1, 1, &ignored("$schema")),
            d(2, 1, &ignored("type")),
            d(8, 5, &ignored("model")),
            d(9, 5, &ignored("sku")),
            d(15, 5, &ignored("scale_settings")),
        ]
    );
    assert_eq!(weights(&l.config), vec![("blue", 50), ("green", 50)]);
}

#[test]
fn azure_key_warning_is_at_the_first_occurrence_in_the_file() {
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue:\n    type: managed\n    \
               instances: [127.0.0.1:9001]\ntype: OnlineEndpoint\n";
    assert_eq!(
        valid(src).warnings,
        vec![d(
            5,
            5,
            "`type` is an Azure ML setting that scoregate ignores"
        )]
    );
}

#[test]
fn several_errors_are_all_reported_sorted_by_position() {
    // The validator checks `listen` first; the report follows the file.
    let src = "deployments:
  green:
    instances: [127.0.0.1:0]
  Blue:
    instances: [bad_host:1]
  purple:
    instances: []
traffic:
  green: 50
  blue: 60
auth_mode: weird
listen: nope
";
    assert_eq!(
        errors(src),
        vec![
            d(
                3,
                17,
                "instance `127.0.0.1:0`: port `0` is not a number from 1 to 65535"
            ),
            d(4, 3, &format!("deployment name `Blue` {NAME_RULE}")),
            d(
                5,
                17,
                "instance `bad_host:1`: `bad_host` is not an IP address or a DNS name"
            ),
            d(7, 5, "deployment `purple` has an empty `instances` list"),
            d(
                8,
                1,
                "traffic weights sum to 110 (green=50 + blue=60); they must sum to exactly 100, \
                 or all be 0"
            ),
            d(
                10,
                3,
                "`traffic` names `blue`, which is not a deployment (deployments: green, Blue, purple)"
            ),
            d(11, 1, "auth_mode `weird` is not known: use `none` or `key`"),
            d(
                12,
                1,
                "listen `nope` is not an address: write IP:PORT, like 127.0.0.1:8080"
            ),
        ]
    );
}

#[test]
fn defaults() {
    let c = clean(BLUE);
    assert_eq!(c.name, None);
    assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.admin_listen,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.pin_header, HeaderName::from_static("x-api-version"));
    assert_eq!(c.max_request_body_bytes, 16 * 1024 * 1024);
    assert_eq!(c.deployments.len(), 1);
    let blue = &c.deployments[0];
    assert_eq!(blue.name, "blue");
    assert_eq!(blue.weight, 100);
    assert_eq!(blue.instances, ["127.0.0.1:9001"]);
    assert_eq!(blue.request.request_timeout, Duration::from_millis(5000));
    assert_eq!(blue.request.max_queue_wait, Duration::from_millis(500));
    assert_eq!(blue.request.max_concurrent_per_instance, 0);
    assert_eq!(blue.request, RequestSettings::default());
    // An empty `request:` keeps every default.
    let c = clean(&format!("{BLUE}    request: {{}}\n"));
    assert_eq!(c.deployments[0].request, RequestSettings::default());
}

#[test]
fn every_setting_is_read() {
    let src = "name: my-endpoint
listen: 0.0.0.0:18080
admin_listen: 127.0.0.1:19090
pin_header: x-deployment-pin
max_request_body_bytes: 1048576
traffic:
  blue: 100
deployments:
  blue:
    instances: [127.0.0.1:9001, 127.0.0.1:9002]
    request:
      request_timeout_ms: 3000
      max_concurrent_requests_per_instance: 1
      max_queue_wait_ms: 250
";
    let c = clean(src);
    assert_eq!(c.name.as_deref(), Some("my-endpoint"));
    assert_eq!(c.listen, "0.0.0.0:18080".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.admin_listen,
        "127.0.0.1:19090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.pin_header.as_str(), "x-deployment-pin");
    assert_eq!(c.max_request_body_bytes, 1_048_576);
    assert_eq!(
        c.deployments[0].request,
        RequestSettings {
            request_timeout: Duration::from_millis(3000),
            max_concurrent_per_instance: 1,
            max_queue_wait: Duration::from_millis(250),
        }
    );
}

#[test]
fn deployments_are_ordered_as_in_traffic_then_the_rest() {
    let src = "traffic:
  green: 30
  blue: 70
deployments:
  red:
    instances: [127.0.0.1:9201]
  blue:
    instances: [127.0.0.1:9001]
  yellow:
    instances: [127.0.0.1:9301]
  green:
    instances: [127.0.0.1:9101]
";
    let c = clean(src);
    assert_eq!(
        weights(&c),
        vec![("green", 30), ("blue", 70), ("red", 0), ("yellow", 0)]
    );
    assert_eq!(c.deployments[0].instances, ["127.0.0.1:9101"]);
    assert_eq!(c.deployments[3].instances, ["127.0.0.1:9301"]);
}

#[test]
fn request_settings_is_a_synonym_of_request() {
    let settings = "      request_timeout_ms: 1234\n      max_concurrent_requests_per_instance: 2\n      \
                    max_queue_wait_ms: 50\n";
    let a = clean(&format!("{BLUE}    request:\n{settings}"));
    let b = clean(&format!("{BLUE}    request_settings:\n{settings}"));
    let expected = RequestSettings {
        request_timeout: Duration::from_millis(1234),
        max_concurrent_per_instance: 2,
        max_queue_wait: Duration::from_millis(50),
    };
    assert_eq!(a.deployments[0].request, expected);
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------------
// The files of config/ (the seeds' canary flow) and the seeds' own Azure ML file.

/// A file of `config/`: its name, its text and the weights it must give.
type FlowFile = (&'static str, &'static str, &'static [(&'static str, u8)]);

#[test]
fn canary_flow_files_are_valid() {
    let files: [FlowFile; 5] = [
        (
            "step-2-scale-blue.yaml",
            include_str!("../../config/step-2-scale-blue.yaml"),
            &[("blue", 100)],
        ),
        (
            "step-3-add-green.yaml",
            include_str!("../../config/step-3-add-green.yaml"),
            &[("blue", 100), ("green", 0)],
        ),
        (
            "step-4-flight-green.yaml",
            include_str!("../../config/step-4-flight-green.yaml"),
            &[("blue", 90), ("green", 10)],
        ),
        (
            "step-5-full-green.yaml",
            include_str!("../../config/step-5-full-green.yaml"),
            &[("blue", 0), ("green", 100)],
        ),
        (
            "step-6-delete-blue.yaml",
            include_str!("../../config/step-6-delete-blue.yaml"),
            &[("green", 100)],
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for (file, src, expected) in files {
        // At its real path: `access_log: {path: ../target/...}` is relative to it.
        let l = parse_str(src, &dir.join(file)).unwrap_or_else(|e| panic!("{e}"));
        let c = &l.config;
        assert_eq!(weights(c), expected, "{file}");
        assert_eq!(
            c.listen,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
            "{file}"
        );
        assert_eq!(
            c.admin_listen,
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap(),
            "{file}"
        );
        for dep in &c.deployments {
            let instances = match dep.name.as_str() {
                "blue" => ["127.0.0.1:9001", "127.0.0.1:9002"],
                _ => ["127.0.0.1:9101", "127.0.0.1:9102"],
            };
            assert_eq!(dep.instances, instances, "{file}");
            assert_eq!(
                dep.request.request_timeout,
                Duration::from_millis(3000),
                "{file}"
            );
        }
        // Only the first file keeps the Azure ML keys (and their warnings); none is an error.
        // A log directory not made yet (a target directory elsewhere) is a warning too.
        for w in &l.warnings {
            let azure = file == "step-2-scale-blue.yaml"
                && w.message
                    .ends_with("is an Azure ML setting that scoregate ignores");
            let log_dir = w.message.starts_with("access_log.path: directory ");
            assert!(azure || log_dir, "{file}: unexpected warning {w:?}");
        }
    }
}

/// The Azure ML endpoint file of step 4 of seed 001, verbatim (trailing spaces included), with an
/// `instances:` line added at the end of each deployment (lines 27 and 45).
const SEED_STEP_4: &str = r#"#source ../configs/online-endpoint/mir/gitops/managed-4-flight-green-OnlineEndpoint.yaml
$schema: http://azureml/sdk-2-0/OnlineEndpoint.json
name: myEndpoint
type: OnlineEndpoint
auth_mode: aml_token
traffic:
  blue: 90
  green: 10

deployments:
  #blue deployment
  blue:
    model: aml:models/my-model-m1:1
    code_reference:
      code: ./src/onlinescoring/m1/
      scoring_script: ./src/onlinescoring/m1/score.py
    environment: ./src/onlinescoring/env_m1.yaml  
    sku: Standard_FS4_v2
    scale:
      scale_type: manual
      instance_count: 5
      min_instances: 1
      max_instances: 5
    request:
      request_timeout_ms: 3000
      max_concurrent_requests_per_instance: 1
    instances: [127.0.0.1:9001, 127.0.0.1:9002]
  
  #green deployment
  green:    
    model: aml:models/my-model-m2:1
    code_reference:
      code: ./src/onlinescoring/m2/
      scoring_script: ./src/onlinescoring/m2/score.py
    environment: ./src/onlinescoring/env_m2.yaml  
    sku: Standard_FS4_v2
    scale:
      scale_type: manual
      instance_count: 5
      min_instances: 1
      max_instances: 5
    request:
      request_timeout_ms: 3000
      max_concurrent_requests_per_instance: 1
    instances: [127.0.0.1:9101, 127.0.0.1:9102]
"#;

#[test]
fn seed_azure_file_is_accepted_with_warnings() {
    let l = valid(SEED_STEP_4);
    let ignored = |key: &str| format!("`{key}` is an Azure ML setting that scoregate ignores");
    assert_eq!(
        l.warnings,
        vec![
            d(2, 1, &ignored("$schema")),
            d(4, 1, &ignored("type")),
            d(5, 1, AML_TOKEN_WARNING),
            d(13, 5, &ignored("model")),
            d(14, 5, &ignored("code_reference")),
            d(17, 5, &ignored("environment")),
            d(18, 5, &ignored("sku")),
            d(19, 5, &ignored("scale")),
        ]
    );
    let c = &l.config;
    assert_eq!(c.name.as_deref(), Some("myEndpoint"));
    assert_eq!(weights(c), vec![("blue", 90), ("green", 10)]);
    assert_eq!(
        c.deployments[0].instances,
        ["127.0.0.1:9001", "127.0.0.1:9002"]
    );
    assert_eq!(
        c.deployments[1].instances,
        ["127.0.0.1:9101", "127.0.0.1:9102"]
    );
    for dep in &c.deployments {
        assert_eq!(
            dep.request,
            RequestSettings {
                request_timeout: Duration::from_millis(3000),
                max_concurrent_per_instance: 1,
                max_queue_wait: Duration::from_millis(500),
            }
        );
    }
}

#[test]
fn seed_azure_file_with_a_misspelt_key_is_refused() {
    let src = SEED_STEP_4.replacen("    request:\n", "    reqest:\n", 1);
    assert_ne!(src, SEED_STEP_4);
    assert_eq!(
        errors(&src),
        vec![d(
            24,
            5,
            "deployments.blue: unknown key `reqest` in a deployment (did you mean `request`?)"
        )]
    );
}

#[test]
fn a_byte_order_mark_is_not_content() {
    let src = format!("\u{feff}name: x\n{BLUE}");
    assert!(parse_str(&src, Path::new("t.yaml")).is_ok());
    // And `traffic` rewrites keep it.
    let (out, _) = rewrite_traffic(&src, Path::new("t.yaml"), &[("blue".into(), 100)]).unwrap();
    assert!(out.starts_with('\u{feff}'));
}

#[test]
fn dns_refresh_defaults_to_five_seconds_and_has_a_floor() {
    let c = parse_str(BLUE, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.config.dns_refresh, Duration::from_secs(5));
    let src = format!("dns_refresh_ms: 1500\n{BLUE}");
    let c = parse_str(&src, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.config.dns_refresh, Duration::from_millis(1500));
    let src = format!("dns_refresh_ms: 10\n{BLUE}");
    assert_eq!(
        errors(&src),
        vec![d(1, 1, "dns_refresh_ms must be at least 100")]
    );
}

// ---------------------------------------------------------------------------------------------
// One pass: structural errors (unknown, repeated, mistyped keys) no longer hide the others.

#[test]
fn an_unknown_key_a_bad_instance_and_a_wrong_sum_are_all_reported_in_file_order() {
    let src = "name: x
listn: 127.0.0.1:8081
traffic:
  blue: 90
  green: 20
deployments:
  blue:
    instances: [127.0.0.1:9001]
  green:
    instances: [nohost]
";
    assert_eq!(
        errors(src),
        vec![
            d(
                2,
                1,
                "unknown key `listn` in the endpoint file (did you mean `listen`?)"
            ),
            d(
                3,
                1,
                "traffic weights sum to 110 (blue=90 + green=20); they must sum to exactly 100, \
                 or all be 0"
            ),
            d(
                10,
                17,
                "instance `nohost`: expected host:port, like 127.0.0.1:9001"
            ),
        ]
    );
}

#[test]
fn unknown_repeated_and_mistyped_keys_of_deployments_are_all_reported() {
    let src = "traffic:
  blue: 50
  green: 50
deployments:
  blue:
    instances: [127.0.0.1:9001]
    replicas: 3
    instances: [127.0.0.1:9002]
  green:
    instances: 5
    request:
      request_timeout_ms: \"100\"
      max_concurrent_requests_per_instance: -1
      max_queue_wait_ms: 5000000000000000000000
";
    assert_eq!(
        errors(src),
        vec![
            d(
                7,
                5,
                "deployments.blue: unknown key `replicas` in a deployment; expected one of: \
                 instances, grpc_instances, request, request_settings, tls, headers, bearer_key_file"
            ),
            d(
                8,
                5,
                "deployments.blue: duplicate key `instances` in a deployment"
            ),
            d(
                10,
                16,
                "deployments.green.instances: invalid type: integer `5`, expected a list of \
                 instances, like [127.0.0.1:9001, 127.0.0.1:9002]"
            ),
            d(
                12,
                27,
                "deployments.green.request.request_timeout_ms: invalid type: string \"100\", \
                 expected u64"
            ),
            d(
                13,
                45,
                "deployments.green.request.max_concurrent_requests_per_instance: invalid type: \
                 integer `-1`, expected u32"
            ),
            d(
                14,
                26,
                "deployments.green.request.max_queue_wait_ms: invalid value: integer \
                 `5000000000000000000000`, expected u64"
            ),
        ]
    );
}

#[test]
fn a_value_of_the_wrong_type_is_reported_once_and_not_as_missing() {
    let src = "name:
listen: [127.0.0.1:8080]
pin_header: {a: b}
max_request_body_bytes: 1.5
traffic: [blue]
mirror_traffic: {green: [10]}
deployments: 5
";
    // An empty value is at the end of its key.
    assert_eq!(
        errors(src),
        vec![
            d(
                1,
                5,
                "name: invalid type: unit value, expected a plain value (text or number)"
            ),
            d(
                2,
                9,
                "listen: invalid type: sequence, expected a plain value (text or number)"
            ),
            d(3, 13, "pin_header: invalid type: map, expected a string"),
            d(
                4,
                25,
                "max_request_body_bytes: invalid type: floating point `1.5`, expected u64"
            ),
            d(
                5,
                10,
                "traffic: invalid type: sequence, expected a map of deployment name to weight, \
                 like `blue: 90`"
            ),
            d(
                6,
                25,
                "mirror_traffic.green: invalid type: sequence, expected an integer mirror \
                 percentage from 0 to 100"
            ),
            d(
                7,
                14,
                "deployments: invalid type: integer `5`, expected a map of deployment name to \
                 its settings"
            ),
        ]
    );
    // A deployment whose settings are not a map: no "has no instances" on top.
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue: [127.0.0.1:9001]\n";
    assert_eq!(
        errors(src),
        vec![d(
            4,
            9,
            "deployments.blue: invalid type: sequence, expected a deployment: a mapping with \
             `instances:`"
        )]
    );
    // An instance that is not a plain value, beside a bad one: both reported.
    let src = "traffic:\n  blue: 100\ndeployments:\n  blue:\n    instances: [[a], ~, nohost]\n";
    assert_eq!(
        errors(src),
        vec![
            d(
                5,
                17,
                "deployments.blue.instances[0]: invalid type: sequence, expected a plain value \
                 (text or number)"
            ),
            d(
                5,
                22,
                "deployments.blue.instances[1]: invalid type: unit value, expected a plain value \
                 (text or number)"
            ),
            d(
                5,
                25,
                "instance `nohost`: expected host:port, like 127.0.0.1:9001"
            ),
        ]
    );
}

#[test]
fn a_repeated_key_does_not_hide_the_errors_after_it() {
    let src = format!(
        "name: a\nname: b\nauth_mode: weird\ntraffic:\n  blue: 100\n  blue: 0\n  red: 0\n{BLUE_GREEN}"
    );
    assert_eq!(
        errors(&src),
        vec![
            d(2, 1, "duplicate key `name` in the endpoint file"),
            d(3, 1, "auth_mode `weird` is not known: use `none` or `key`"),
            d(
                6,
                3,
                "traffic: deployment `blue` appears twice in `traffic`"
            ),
            d(
                7,
                3,
                "`traffic` names `red`, which is not a deployment (deployments: blue, green)"
            ),
        ]
    );
}

#[test]
fn anchors_are_read_and_aliases_are_refused() {
    let src = format!("name: &n x\n{BLUE}");
    assert_eq!(clean(&src).name.as_deref(), Some("x"));
    let src = "traffic: &t\n  blue: 100\nmirror_traffic: *t\nname: &n x\nsticky_header: *n\n";
    let alias = "aliases (`*name`) are not supported in an endpoint file: write the value out";
    assert_eq!(errors(src), vec![d(3, 17, alias), d(5, 16, alias)]);
    // An alias of no anchor is a syntax error.
    assert_eq!(
        errors("name: *n\n"),
        vec![d(1, 7, "while parsing node, found unknown anchor")]
    );
}

#[test]
fn tags_and_second_documents_are_refused() {
    assert_eq!(
        errors(&format!("name: !custom x\n{BLUE}")),
        vec![d(
            1,
            7,
            "the tag `!custom` is not supported in an endpoint file: remove it"
        )]
    );
    // Core tags are understood: `!!str` makes a string of a number.
    let src = format!("traffic:\n  blue: !!str 100\n{BLUE_GREEN}");
    assert_eq!(
        errors(&src),
        vec![d(
            2,
            9,
            "traffic.blue: weight \"100\" is a string: write weights as plain integers (90, not \"90\")"
        )]
    );
    assert_eq!(
        errors(&format!("{BLUE}---\nname: x\n")),
        vec![d(
            6,
            1,
            "a second YAML document (`---`): an endpoint file holds one"
        )]
    );
    // One document, introduced by `---` and closed by `...`, is fine.
    clean(&format!("---\n{BLUE}...\n"));
}

#[test]
fn odd_files_are_refused_without_a_panic() {
    let deep_flow = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_block: String = (0..200)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let odd: Vec<String> = [
        "\t",
        "\tname: x\n",
        "name:\tx\n",
        "traffic:\n  blue:\t100\n",
        "- a\n- b\n",
        "42\n",
        "~\n",
        "---\n",
        "...\n",
        "---\n...\n---\n",
        "{\n",
        "}\n",
        "]\n",
        "[a, b\n",
        "&a\n",
        "*a\n",
        "&a [*a]\n",
        "!!\n",
        "!<tag:x> a\n",
        "%YAML 1.2\n---\na: 1\n",
        "%FOO bar\n---\n",
        "? [a, b]\n: c\n",
        "? {a: b}\n",
        "[a]: b\n",
        "null: x\ntrue: y\n1: z\n1.5: w\n",
        "deployments:\n  ~:\n  [a]: b\n  1: {instances: [1]}\n",
        "traffic:\n  ~: 1\n  blue: 99999999999999999999999999999999999999999\n  green: -99999999999999999999\n",
        "traffic: {blue: .inf, green: .nan, red: -.inf}\n",
        "a: |\n  literal\n\t\nb: >\n folded\n",
        "\"\\x00\\u0000\": \"\\uD800\"\n",
        "a: \u{0}\n",
        "a: \u{feff}b\n",
        "\u{feff}\u{feff}a: 1\n",
        "é: ü\n«»: —\n",
        "a:\n- b\n-\n- - c\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([deep_flow, deep_block, "a: ".repeat(1000), "x".repeat(100_000)])
    .collect();
    for src in &odd {
        let result = std::panic::catch_unwind(|| {
            let parsed = parse(src).map(|_| ());
            let rewritten =
                rewrite_traffic(src, Path::new("t.yaml"), &[("blue".into(), 100)]).map(|_| ());
            (parsed, rewritten.is_ok())
        });
        let Ok((parsed, _)) = result else {
            panic!("panicked on {src:?}");
        };
        if let Err(e) = parsed {
            assert!(!e.errors.is_empty(), "{src:?}");
            for d in &e.errors {
                assert!(d.line >= 1 && d.column >= 1, "{src:?}: {d:?}");
            }
        }
    }
    assert_eq!(
        errors(&format!("{}{}", "[".repeat(100), "]".repeat(100))),
        vec![d(1, 65, "maps and lists nested deeper than 64 levels")]
    );
}

#[test]
fn traffic_summary_is_in_table_order() {
    let src = format!(
        "traffic:\n  green: 30\n  blue: 70\n{BLUE_GREEN}  red:\n    instances: [127.0.0.1:9201]\n"
    );
    assert_eq!(clean(&src).traffic_summary(), "green=30 blue=70 red=0");
}

#[test]
fn grpc_instances_stand_beside_instances_or_alone() {
    let c = clean(
        "traffic: {blue: 100}\ndeployments:\n  blue:\n    instances: [127.0.0.1:8000]\n    grpc_instances: [127.0.0.1:8001, scoring:8001]\n  green:\n    grpc_instances: [127.0.0.1:9001]\n",
    );
    assert_eq!(c.deployments[0].instances, ["127.0.0.1:8000"]);
    assert_eq!(
        c.deployments[0].grpc_instances,
        ["127.0.0.1:8001", "scoring:8001"]
    );
    assert!(c.deployments[1].instances.is_empty());
    assert_eq!(c.deployments[1].grpc_instances, ["127.0.0.1:9001"]);
}

#[test]
fn grpc_instances_are_checked_like_instances() {
    assert_eq!(
        errors(
            "traffic: {blue: 100}\ndeployments:\n  blue:\n    grpc_instances: [127.0.0.1:8001, 127.0.0.1, 127.0.0.1:8001]\n  green:\n    grpc_instances: []\n  teal: {request: {max_queue_wait_ms: 5}}\n"
        ),
        [
            d(
                4,
                38,
                "instance `127.0.0.1`: expected host:port, like 127.0.0.1:9001"
            ),
            d(
                4,
                49,
                "instance `127.0.0.1:8001` is listed twice in deployment `blue`"
            ),
            d(
                6,
                5,
                "deployment `green` has an empty `grpc_instances` list"
            ),
            d(
                7,
                3,
                "deployment `teal` has no `instances`: list its scoring servers as host:port"
            ),
        ]
    );
}

// === TLS, headers and bearer keys ===

#[test]
fn tls_headers_and_bearer_errors_are_all_reported_each_at_its_key() {
    let src = "tls:
  cert_file: a.crt
  ciphers: all
admin_tls: {}
traffic: {blue: 100}
deployments:
  blue:
    instances: [127.0.0.1:9001]
    tls: {server_name: 'not a name!', ca_file: missing-ca.crt, verify: false}
    headers: {host: x, 'bad name': y, x-ok: 1}
    bearer_key_file: missing.key
";
    assert_eq!(
        errors(src),
        vec![
            d(
                2,
                3,
                "tls: `cert_file` and `key_file` go together: name both"
            ),
            d(
                3,
                3,
                "tls: unknown key `ciphers` in listener TLS settings; expected one of: cert_file, key_file, client_ca_file"
            ),
            d(
                4,
                1,
                "admin_tls needs `cert_file` and `key_file` (PEM files, relative to this file)"
            ),
            d(
                9,
                11,
                "deployments.blue.tls: server_name `not a name!` is not a DNS name or IP address"
            ),
            d(
                9,
                39,
                "deployments.blue.tls: ca_file `missing-ca.crt` cannot be read: No such file or directory (os error 2)"
            ),
            d(
                9,
                64,
                "deployments.blue.tls: unknown key `verify` in a deployment's TLS settings; expected one of: ca_file, server_name, cert_file, key_file"
            ),
            d(
                10,
                15,
                "deployments.blue.headers: `host` is set by the proxy itself and cannot be set here"
            ),
            d(
                10,
                24,
                "deployments.blue.headers: `bad name` is not a valid header name"
            ),
            d(
                11,
                5,
                "deployments.blue: bearer_key_file `missing.key` cannot be read: No such file or directory (os error 2)"
            ),
        ]
    );
}

#[test]
fn a_bearer_key_is_read_beside_the_file_hidden_and_its_change_is_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoint.yaml");
    let src = "traffic: {blue: 100}
deployments:
  blue:
    instances: [127.0.0.1:9001]
    tls: {}
    headers: {azureml-model-deployment: blue}
    bearer_key_file: blue.key
";
    std::fs::write(dir.path().join("blue.key"), "s3cret-key-1\n").unwrap();
    let first = parse_str(src, &path).unwrap();
    let blue = &first.config.deployments[0];
    let bearer = blue.bearer.as_ref().unwrap();
    assert_eq!(bearer.value, "Bearer s3cret-key-1");
    assert!(bearer.value.is_sensitive());
    assert_eq!(blue.headers[0].0, "azureml-model-deployment");
    let tls = blue.tls.as_ref().unwrap();
    assert_eq!(
        (&tls.ca, &tls.server_name, &tls.client),
        (&None, &None, &None)
    );
    assert!(!format!("{:?}", first.config).contains("s3cret"));
    // A new key in the same file is a new configuration.
    std::fs::write(dir.path().join("blue.key"), "s3cret-key-2\n").unwrap();
    let second = parse_str(src, &path).unwrap();
    assert_ne!(first.fingerprint, second.fingerprint);
    // An empty key file is refused without showing anything of it.
    std::fs::write(dir.path().join("blue.key"), "\n").unwrap();
    let e = parse_str(src, &path).unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    // `authorization` in headers and a bearer key both set the same header.
    let both = src.replace("{azureml-model-deployment: blue}", "{authorization: x}");
    std::fs::write(dir.path().join("blue.key"), "k\n").unwrap();
    let e = parse_str(&both, &path).unwrap_err();
    assert!(e.to_string().contains("keep one"), "{e}");
}

// === The access log and span export ===

/// `access_log:` as written (a block, each line indented by two), then [`BLUE`]: the block's
/// first setting is on line 2.
fn with_access_log(settings: &str) -> String {
    let mut s = String::from("access_log:\n");
    for line in settings.lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s.push_str(BLUE);
    s
}

#[test]
fn access_log_is_read_with_every_setting_beside_the_endpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let l = clean_in(
        dir.path(),
        &with_access_log("path: logs/access.log\nformat: text\nsample: 0.25\nlog_query: true"),
    );
    assert_eq!(
        l.config.access_log,
        Some(AccessLogConfig {
            path: dir.path().join("logs").join("access.log"),
            format: LogFormat::Text,
            sample: 0.25,
            log_query: true,
        })
    );
    // Flow style, and the ends of the share: 0 (errors only) and 1 written as integers.
    for (sample, share) in [("0", 0.0), ("1", 1.0), ("0.001", 0.001)] {
        let src =
            format!("access_log: {{path: access.log, format: json, sample: {sample}}}\n{BLUE}");
        let c = clean_in(dir.path(), &src).config;
        let a = c.access_log.unwrap();
        assert_eq!((a.format, a.sample), (LogFormat::Json, share), "{sample}");
    }
    // Without `access_log` nothing is logged and nothing exported.
    let c = clean(BLUE);
    assert_eq!((c.access_log, c.otlp_endpoint), (None, None));
}

#[test]
fn access_log_with_only_a_path_takes_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = clean_in(dir.path(), &with_access_log("path: access.log")).config;
    assert_eq!(
        c.access_log,
        Some(AccessLogConfig {
            path: dir.path().join("access.log"),
            format: LogFormat::Json,
            sample: 1.0,
            log_query: false,
        })
    );
}

#[test]
fn access_log_path_is_relative_to_the_endpoint_file_and_dash_is_standard_output() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let src = with_access_log("path: access.log");
    // The same file read from two directories logs beside each, not in the working directory.
    let here = clean_in(dir.path(), &src).config.access_log.unwrap();
    let there = clean_in(other.path(), &src).config.access_log.unwrap();
    assert_eq!(here.path, dir.path().join("access.log"));
    assert_eq!(there.path, other.path().join("access.log"));
    // An absolute path is used as is.
    let abs = other.path().join("abs.log");
    let c = clean_in(
        dir.path(),
        &with_access_log(&format!("path: {}", abs.display())),
    );
    assert_eq!(c.config.access_log.unwrap().path, abs);
    // `-` is standard output: never made relative to anything.
    for src in [
        with_access_log("path: \"-\""),
        with_access_log("path: '-'"),
        format!("access_log: {{path: \"-\", format: text}}\n{BLUE}"),
    ] {
        let a = clean_in(dir.path(), &src).config.access_log.unwrap();
        assert_eq!(a.path, Path::new("-"), "{src}");
    }
}

#[test]
fn access_log_in_a_directory_that_does_not_exist_is_a_warning_and_the_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!("name: x\n{}", with_access_log("path: nope/access.log"));
    let l = parse_in(dir.path(), &src).unwrap_or_else(|e| panic!("refused:\n{e}"));
    assert_eq!(
        l.warnings,
        vec![d(
            3,
            3,
            &format!(
                "access_log.path: directory {} does not exist; lines are dropped (and counted) until it does",
                dir.path().join("nope").display()
            )
        )]
    );
    assert_eq!(
        l.config.access_log.as_ref().map(|a| a.path.clone()),
        Some(dir.path().join("nope").join("access.log"))
    );
    assert_eq!(weights(&l.config), vec![("blue", 100)]);
    // Once the directory is there, no warning.
    std::fs::create_dir(dir.path().join("nope")).unwrap();
    clean_in(dir.path(), &src);
}

#[test]
fn access_log_and_otlp_errors_are_all_reported_each_at_its_key_or_value() {
    let src = format!(
        "access_log:
  format: xml
  sample: 1.5
  log_query: maybe
  rotate: daily
otlp_endpoint: localhost:4317
{BLUE}"
    );
    assert_eq!(
        errors(&src),
        vec![
            d(
                1,
                1,
                "access_log needs `path:` (a file, or \"-\" for standard output)"
            ),
            d(
                2,
                3,
                "access_log.format: `xml` is not a format; use json or text"
            ),
            d(
                3,
                3,
                "access_log.sample: 1.5 is not a share; use 0 to 1 (1 logs every request)"
            ),
            d(
                4,
                14,
                "access_log.log_query: invalid type: string \"maybe\", expected a boolean (true or false)"
            ),
            d(
                5,
                3,
                "access_log: unknown key `rotate` in access_log; expected one of: path, format, sample, log_query"
            ),
            d(
                6,
                1,
                "otlp_endpoint: `localhost:4317` is not an OTLP/gRPC address like http://127.0.0.1:4317"
            ),
        ]
    );
    let src = format!(
        "access_log:
  path: \"\"
  sample: -1
  log_query: true
otlp_endpoint: https://x:4317
{BLUE}"
    );
    assert_eq!(
        errors(&src),
        vec![
            d(2, 3, "access_log.path is empty"),
            d(
                3,
                11,
                "access_log.sample: invalid type: integer `-1`, expected a number, 0 or more"
            ),
            d(
                5,
                1,
                "otlp_endpoint: `https://x:4317` is not an OTLP/gRPC address like http://127.0.0.1:4317"
            ),
        ]
    );
}

#[test]
fn access_log_values_of_the_wrong_type_are_reported_once_at_the_value() {
    for (setting, line, column, message) in [
        (
            "sample: abc",
            3,
            11,
            "access_log.sample: invalid type: string \"abc\", expected a number, 0 or more",
        ),
        (
            "sample: .nan",
            3,
            11,
            "access_log.sample: invalid type: floating point `NaN`, expected a number, 0 or more",
        ),
        (
            "log_query: 1",
            3,
            14,
            "access_log.log_query: invalid type: integer `1`, expected a boolean (true or false)",
        ),
        (
            "log_query: \"true\"",
            3,
            14,
            "access_log.log_query: invalid type: string \"true\", expected a boolean (true or false)",
        ),
        (
            "format: [json]",
            3,
            11,
            "access_log.format: invalid type: sequence, expected a string",
        ),
        (
            "format: JSON",
            3,
            3,
            "access_log.format: `JSON` is not a format; use json or text",
        ),
    ] {
        let src = with_access_log(&format!("path: access.log\n{setting}"));
        assert_eq!(errors(&src), vec![d(line, column, message)], "{setting}");
    }
    // `path:` with nothing after it is a value of the wrong type, not a missing path.
    assert_eq!(
        errors(&with_access_log("path:")),
        vec![d(
            2,
            7,
            "access_log.path: invalid type: unit value, expected a plain value (text or number)"
        )]
    );
    // Not a map.
    assert_eq!(
        errors(&format!("access_log: access.log\n{BLUE}")),
        vec![d(
            1,
            13,
            "access_log: invalid type: string \"access.log\", expected access log settings: a mapping with `path:`"
        )]
    );
}

#[test]
fn a_misspelt_access_log_key_is_suggested_and_the_missing_path_not_reported_again() {
    // Like `instance:` for `instances:` in a deployment: the suggestion already says what is
    // missing.
    assert_eq!(
        errors(&with_access_log("paht: access.log")),
        vec![d(
            2,
            3,
            "access_log: unknown key `paht` in access_log (did you mean `path`?)"
        )]
    );
    assert_eq!(
        errors(&with_access_log("path: access.log\nsampel: 0.5")),
        vec![d(
            3,
            3,
            "access_log: unknown key `sampel` in access_log (did you mean `sample`?)"
        )]
    );
}

#[test]
fn otlp_endpoint_must_be_an_http_address() {
    for (written, kept) in [
        ("http://127.0.0.1:4317", "http://127.0.0.1:4317"),
        ("http://127.0.0.1:4317/", "http://127.0.0.1:4317"),
        (
            "http://collector.example:4317",
            "http://collector.example:4317",
        ),
        ("\"http://[::1]:4317\"", "http://[::1]:4317"),
    ] {
        let c = clean(&format!("otlp_endpoint: {written}\n{BLUE}"));
        assert_eq!(c.otlp_endpoint.as_deref(), Some(kept), "{written}");
    }
    for written in [
        "localhost:4317",
        "127.0.0.1:4317",
        "https://x:4317",
        "grpc://x:4317",
        "http:///x",
        "\"\"",
    ] {
        let value = written.trim_matches('"');
        assert_eq!(
            errors(&format!("name: x\notlp_endpoint: {written}\n{BLUE}")),
            vec![d(
                2,
                1,
                &format!(
                    "otlp_endpoint: `{value}` is not an OTLP/gRPC address like http://127.0.0.1:4317"
                )
            )],
            "{written}"
        );
    }
    // Not a scalar.
    let errs = errors(&format!("otlp_endpoint: [http://x:4317]\n{BLUE}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (1, 16), "{errs:?}");
}
