//! The per-request routing decision: choose a deployment (weighted, or pinned) and an instance.
//! Run with `cargo bench --bench routing`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use scoregate::config::parse_str;
use scoregate::discovery::Names;
use scoregate::routing::compile;

const FILE: &str = "traffic: {blue: 90, green: 10}\ndeployments:\n  blue: {instances: [127.0.0.1:9001, 127.0.0.1:9002, 127.0.0.1:9003]}\n  green: {instances: [127.0.0.1:9101, 127.0.0.1:9102]}\n";

fn routing(c: &mut Criterion) {
    let cfg = parse_str(FILE, Path::new("bench.yaml"))
        .expect("valid")
        .config;
    let table = compile(&cfg, &Names::default(), None).apply(&scoregate::metrics::Metrics::new());
    let table = arc_swap::ArcSwap::from_pointee(table);
    let mut rng = SmallRng::seed_from_u64(1);
    c.bench_function(
        "weighted: load table, choose deployment and instance",
        |b| {
            b.iter(|| {
                let t = table.load();
                let choice = t.choose(None, &mut rng).unwrap();
                let d = &t.deployments[choice.index];
                let pick = d.pick(&mut rng, None).expect("no limit");
                black_box(pick.instance());
            })
        },
    );
    let pin = HeaderValue::from_static("green");
    c.bench_function("pinned: load table, choose deployment and instance", |b| {
        b.iter(|| {
            let t = table.load();
            let choice = t.choose(Some(black_box(&pin)), &mut rng).unwrap();
            let d = &t.deployments[choice.index];
            let pick = d.pick(&mut rng, None).expect("no limit");
            black_box(pick.instance());
        })
    });
    let mut thread_rng = rand::rng();
    c.bench_function(
        "weighted with the thread-local rng used by the proxy",
        |b| {
            b.iter(|| {
                let t = table.load();
                let choice = t.choose(None, &mut thread_rng).unwrap();
                let d = &t.deployments[choice.index];
                let pick = d.pick(&mut thread_rng, None).expect("no limit");
                black_box(pick.instance());
            })
        },
    );
}

criterion_group!(benches, routing);
criterion_main!(benches);
