//! The live view of a running rollout on a terminal.

use std::io::IsTerminal as _;

use rollout_engine::{Decision, Verdict};

use crate::cli::RunOutput;

/// Where decisions go: one JSON record per line, or the live view (`auto`: the live view on a
/// terminal, JSON otherwise).
pub fn sink(output: RunOutput) -> Box<dyn FnMut(&Decision) + Send> {
    let json = match output {
        RunOutput::Json => true,
        RunOutput::Live => false,
        RunOutput::Auto => !std::io::stdout().is_terminal(),
    };
    if json {
        Box::new(|d: &Decision| println!("{}", serde_json::to_string(d).unwrap_or_default()))
    } else {
        let mut view = Live::new();
        Box::new(move |d: &Decision| view.show(d))
    }
}

/// Prints decisions for a person: a header line per change, rule lines per evaluation.
#[derive(Debug)]
pub struct Live {
    color: bool,
    last: String,
}

impl Live {
    /// A view on standard output.
    pub fn new() -> Live {
        Live {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal(),
            last: String::new(),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\u{1b}[{code}m{s}\u{1b}[0m")
        } else {
            s.to_string()
        }
    }

    /// Shows one decision (skipping ticks where nothing was judged or changed).
    pub fn show(&mut self, d: &Decision) {
        let head = format!("{} {} {}", d.to, d.step_label, d.traffic);
        if !d.evaluated && head == self.last && d.action == "wait" {
            return;
        }
        self.last = head;
        let secs = d.at / 1000;
        let time = format!(
            "{:02}:{:02}:{:02}",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60
        );
        let left = d
            .remaining_s
            .map_or(String::new(), |r| format!("  {r:.0}s left"));
        println!(
            "{} {} step {} {:<20} traffic {:>3}%{}  {} — {}",
            time,
            self.paint("1", &format!("{:<16}", d.to)),
            d.step + 1,
            d.step_label,
            d.traffic,
            left,
            self.paint("36", &d.action),
            d.reason
        );
        for r in &d.rules {
            let verdict = format!("{:?}", r.verdict).to_lowercase();
            let colored = match r.verdict {
                Verdict::Pass => self.paint("32", &verdict),
                Verdict::Fail => self.paint("31", &verdict),
                _ => self.paint("33", &verdict),
            };
            let values = r
                .when
                .iter()
                .map(|c| match (c.lhs, c.rhs) {
                    (Some(l), Some(t)) => {
                        format!("canary {l:.4} {} threshold {t:.4}", c.op.as_str())
                    }
                    _ => "no value".into(),
                })
                .collect::<Vec<_>>()
                .join("; ");
            println!(
                "           {:<26} {:<14} {}{}",
                r.rule,
                colored,
                values,
                if r.acted {
                    format!(" -> {}", r.action.keyword())
                } else {
                    String::new()
                }
            );
        }
    }
}
