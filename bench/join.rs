//! `bench/run join [--rows N]`: `selves join` end to end on loopback. A hub
//! holding N rows serves; an empty node joins it with one `selves-join:`
//! line. Prints the whole command's time, the first sync, the two marker
//! legs and their round trip (as `join` reports them), and a re-run.

use std::path::Path;
use std::time::Instant;

use crate::Node;

pub(crate) fn run(selves: &Path, dir: &Path, rows: usize) {
    let hub = Node::new(selves, dir, "hub");
    let data = dir.join("rows.jsonl");
    let (_, text_bytes, _) = crate::generate(&data, rows);
    hub.ok(&["import", data.to_str().unwrap()]);
    let server = hub.serve();
    let spoke = Node::new(selves, dir, "spoke");
    let blob = hub.ok(&[
        "invite",
        "--join",
        "--peer",
        "spoke",
        "--port",
        &server.port.to_string(),
    ]);

    let started = Instant::now();
    let out = spoke.ok(&["join", blob.trim()]);
    let total = started.elapsed();
    let again_started = Instant::now();
    let again = spoke.ok(&["join", blob.trim()]);
    let again_ms = again_started.elapsed().as_secs_f64() * 1e3;
    assert!(again.contains("nothing changed"), "{again}");

    // The "(259 ms)" of the line that contains `prefix`.
    let ms = |prefix: &str| -> String {
        out.lines()
            .find(|l| l.contains(prefix))
            .and_then(|l| {
                l.split('(')
                    .filter_map(|part| part.split_once(')').map(|(t, _)| t))
                    .find(|t| t.ends_with(" ms"))
            })
            .unwrap_or("?")
            .to_owned()
    };
    let round = out
        .lines()
        .find_map(|l| l.split_once("round trip ").map(|(_, t)| t.to_owned()))
        .unwrap_or_else(|| "?".into());
    println!("hub: {rows} rows, {:.1} MB of text", crate::mb(text_bytes));
    println!("| step | time |");
    println!("|---|---|");
    println!(
        "| whole `selves join` process | {:.2} s |",
        total.as_secs_f64()
    );
    println!(
        "| hello through the pinned certificate | {} |",
        ms("answers at")
    );
    println!("| first sync ({rows} rows) | {} |", ms("first sync"));
    println!("| search index caught up | {} |", ms("searchable"));
    println!("| marker here → hub | {} |", ms("marker written here"));
    println!("| marker hub → here | {} |", ms("marker written on"));
    println!("| marker round trip | {round} |");
    println!("| `selves join` again (no-op) | {again_ms:.0} ms |");
}
