//! Micro-benchmark of statement classification: a typical statement classified again (cache
//! hit) and first-time parses of ~1 KB queries (cache misses).
//!
//! `cargo bench --bench classify`. Targets: a cache hit under 1 µs; a first parse of a 1 KB
//! query under 50 µs.

use sluice::router::classify::Classifier;
use std::hint::black_box;
use std::time::Instant;

const TYPICAL: &str = "SELECT id, name, email, created_at FROM users WHERE id = $1 AND deleted_at IS NULL ORDER BY id";

/// A ~1 KB query, distinct for each `n`.
fn kilobyte_query(n: usize) -> String {
    let mut q = format!("SELECT o.id, o.total, c.name, c.email, lower(c.city) AS city, {n} AS tag FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.status = 'open'");
    let mut i = 0;
    while q.len() < 1000 {
        q.push_str(&format!(" AND (o.region_{i} = ${} OR o.amount_{i} > {})", i + 1, n + i));
        i += 1;
    }
    q.push_str(" ORDER BY o.created_at DESC LIMIT 50");
    q
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let classifier = Classifier::new(&[]);
    classifier.classify(TYPICAL);

    let hits = if quick { 200_000 } else { 2_000_000 };
    let start = Instant::now();
    for _ in 0..hits {
        black_box(classifier.classify(black_box(TYPICAL)));
    }
    let hit_ns = start.elapsed().as_nanos() as f64 / hits as f64;

    let misses = if quick { 300 } else { 3000 };
    let queries: Vec<String> = (0..misses).map(kilobyte_query).collect();
    let avg_len = queries.iter().map(String::len).sum::<usize>() / queries.len();
    let fresh = Classifier::new(&[]);
    let start = Instant::now();
    for q in &queries {
        black_box(fresh.classify(q));
    }
    let miss_us = start.elapsed().as_secs_f64() * 1e6 / misses as f64;

    println!("## Statement classification\n");
    println!("| case | time per statement | target |");
    println!("|---|---:|---|");
    println!("| cached, {}-byte statement ({hits} lookups) | {hit_ns:.0} ns | < 1 µs: {} |", TYPICAL.len(), verdict(hit_ns < 1000.0));
    println!("| first parse, {avg_len}-byte query ({misses} distinct) | {miss_us:.1} µs | < 50 µs: {} |", verdict(miss_us < 50.0));
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
