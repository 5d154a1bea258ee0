//! Micro-benchmark of statement classification: a typical statement classified again (cache
//! hit, on one thread and on several at once), the same statement with other literal values
//! (answered by its shape), first-time parses of ~100-byte statements and
//! ~1 KB queries (cache misses), and a text deep enough to be classified on its own stack.
//!
//! `cargo bench --bench classify` (`-- --quick` for a shorter run). Targets: a cache hit under
//! 1 µs; a first parse of a 1 KB query under 50 µs.

use sluice::router::classify::Classifier;
use std::hint::black_box;
use std::time::Instant;

const TYPICAL: &str = "SELECT id, name, email, created_at FROM users WHERE id = $1 AND deleted_at IS NULL ORDER BY id";

/// A ~1 KB query, of a distinct shape for each `n` (its identifiers differ, not only its
/// literals).
fn kilobyte_query(n: usize) -> String {
    let mut q = format!(
        "SELECT o.id, o.total, c.name, c.email, lower(c.city) AS city, coalesce(o.note, '') AS note_{n}, {n} AS tag \
         FROM orders o JOIN customers c ON c.id = o.customer_id \
         LEFT JOIN (SELECT order_id, sum(amount) AS paid FROM payments GROUP BY order_id) p ON p.order_id = o.id \
         WHERE o.status = 'open'"
    );
    let mut i = 0;
    while q.len() < 950 {
        q.push_str(&format!(" AND (o.region_{i} = ${} OR o.amount_{i} > {})", i + 1, n + i));
        i += 1;
    }
    q.push_str(" ORDER BY o.created_at DESC LIMIT 50");
    q
}

/// CPU time the process has used, in nanoseconds.
fn cpu_ns() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// Nanoseconds per call of `f` over `n` calls: (wall clock, process CPU time). On a busy
/// machine the wall clock includes time spent waiting for a CPU.
fn per_call(n: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    let (start, cpu) = (Instant::now(), cpu_ns());
    for i in 0..n {
        f(i);
    }
    (start.elapsed().as_nanos() as f64 / n as f64, (cpu_ns() - cpu) / n as f64)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let classifier = Classifier::new(&[]);
    classifier.classify(TYPICAL);

    let hits = 2_000_000 / scale;
    let (hit_ns, hit_cpu_ns) = per_call(hits, |_| {
        black_box(classifier.classify(black_box(TYPICAL)));
    });

    let threads = std::thread::available_parallelism().map_or(4, |n| n.get().min(8));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..hits / 4 {
                    black_box(classifier.classify(black_box(TYPICAL)));
                }
            });
        }
    });
    let shared_hit_ns = start.elapsed().as_nanos() as f64 / (hits / 4) as f64;

    let small_misses = 20_000 / scale;
    let valued: Vec<String> = (0..small_misses).map(|n| TYPICAL.replace("$1", &n.to_string())).collect();
    let shaped_ns = per_call(small_misses, |i| {
        black_box(classifier.classify(&valued[i]));
    });
    let small: Vec<String> = (0..small_misses).map(|n| TYPICAL.replace("users", &format!("users_{n}"))).collect();
    let fresh = Classifier::new(&[]);
    let small_ns = per_call(small_misses, |i| {
        black_box(fresh.classify(&small[i]));
    });

    let misses = 5000 / scale;
    let queries: Vec<String> = (0..misses).map(kilobyte_query).collect();
    let avg_len = queries.iter().map(String::len).sum::<usize>() / queries.len();
    let fresh = Classifier::new(&[]);
    let miss_ns = per_call(misses, |i| {
        black_box(fresh.classify(&queries[i]));
    });

    // The parser alone, on the same texts: what classification adds on top of it.
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let parser_ns = per_call(misses, |i| {
        black_box(sqlparser::parser::Parser::parse_sql(&dialect, &queries[i]).is_ok());
    });

    let deep_misses = 200 / scale;
    let deep: Vec<String> = (0..deep_misses).map(|n| format!("SELECT c{n}{}", "+1".repeat(5000))).collect();
    let fresh = Classifier::new(&[]);
    let deep_ns = per_call(deep_misses, |i| {
        black_box(fresh.classify(&deep[i]));
    });

    let us = |(wall, cpu): (f64, f64)| format!("{:.1} µs | {:.1} µs", wall / 1000.0, cpu / 1000.0);
    println!("## Statement classification\n");
    println!("| case | wall clock per statement | CPU per statement | target |");
    println!("|---|---:|---:|---|");
    println!(
        "| cached, {}-byte statement, 1 thread ({hits} lookups) | {hit_ns:.0} ns | {hit_cpu_ns:.0} ns | < 1 µs: {} |",
        TYPICAL.len(),
        verdict(hit_ns < 1000.0)
    );
    println!(
        "| cached, same statement, {threads} threads at once | {shared_hit_ns:.0} ns | | < 1 µs: {} |",
        verdict(shared_hit_ns < 1000.0)
    );
    println!(
        "| same statement with a literal in place of `$1` ({small_misses} distinct values, one shape) | {} | < 1 µs: {} |",
        us(shaped_ns),
        verdict(shaped_ns.1 < 1000.0)
    );
    println!("| first parse, {}-byte statement ({small_misses} distinct) | {} | |", small[0].len(), us(small_ns));
    println!(
        "| first parse, {avg_len}-byte query ({misses} distinct) | {} | < 50 µs: {} |",
        us(miss_ns),
        verdict(miss_ns.1 < 50_000.0)
    );
    println!("| (sqlparser's `parse_sql` alone, same {avg_len}-byte queries) | {} | |", us(parser_ns));
    println!("| first parse, 10 KB chain of 5000 `+`, on its own stack ({deep_misses} distinct) | {} | |", us(deep_ns));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\n{threads} CPUs; load average {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
