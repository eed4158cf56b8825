//! Reload under load: 100 reloads (renames of the endpoint file flipping 100/0 <-> 0/100) while
//! 8 keep-alive clients send requests through the release binary. Reports failed requests
//! (target 0) and the time from each rename to the first answer from the new split (target:
//! median <= 200 ms, worst <= 1 s).
//!
//!     cargo bench --bench reload                # 100 reloads
//!     RELOADS=20 cargo bench --bench reload

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let reloads: usize = std::env::var("RELOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let file = |b: u8, g: u8| blue_green_file(&blue, &green, b, g);
    let proxy = Proc::proxy(&file(100, 0));
    let path = proxy.config.clone().unwrap();
    let tmp = path.with_extension("tmp");
    let load = Load::start(proxy.url("/score"), 8);
    load.wait_for_only("blue", Instant::now(), Duration::from_secs(5))
        .await;

    let started = Instant::now();
    let mut latencies = Vec::with_capacity(reloads);
    for i in 0..reloads {
        let (to, content) = if i % 2 == 0 {
            ("green", file(0, 100))
        } else {
            ("blue", file(100, 0))
        };
        std::fs::write(&tmp, content).unwrap();
        let t = Instant::now();
        std::fs::rename(&tmp, &path).unwrap();
        latencies.push(load.wait_for_only(to, t, Duration::from_secs(5)).await);
        if (i + 1) % 10 == 0 {
            eprintln!("reload {}/{reloads}: last {:?}", i + 1, latencies[i]);
        }
    }
    let elapsed = started.elapsed();
    let samples = load.stop().await;
    let failed = samples
        .iter()
        .filter(|s| !matches!(&s.result, Ok((st, _)) if st.is_success()))
        .count();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!();
    println!(
        "reloads under load: {reloads} in {:.1} s, 8 keep-alive clients",
        elapsed.as_secs_f64()
    );
    println!(
        "requests: {} ({:.0}/s), failed: {failed}",
        samples.len(),
        samples.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "rename -> first answer from the new split: median {:.0} ms, p90 {:.0} ms, worst {:.0} ms, best {:.0} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(latencies[latencies.len() - 1]),
        ms(latencies[0]),
    );
    let generation = proxy.metric("scoregate_config_generation").await;
    println!("generation after the run: {generation} (1 + {reloads} expected)");
    if failed > 0
        || ms(percentile(&latencies, 0.5)) > 200.0
        || ms(latencies[latencies.len() - 1]) > 1000.0
    {
        println!("TARGET MISSED (failed 0, median <= 200 ms, worst <= 1 s)");
        std::process::exit(1);
    }
}
