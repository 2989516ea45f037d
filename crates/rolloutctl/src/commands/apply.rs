//! `rolloutctl apply`: policy files to ModelRollouts (server-side apply), for the controller to
//! drive. Every file is checked before anything is written: one invalid file changes nothing.

use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use rollout_api::ModelRollout;
use rollout_runner::isvc::Isvc;

use super::Exit;
use crate::cli::ApplyArgs;
use crate::files::{self, Read};

/// The field manager of `apply`'s writes.
const APPLY_MANAGER: &str = "rolloutctl-apply";

pub fn run(args: &ApplyArgs) -> Exit {
    let paths = match files::collect(&args.policies) {
        Ok(p) if p.is_empty() => {
            eprintln!("error: no .rollout files found in the given paths");
            return Exit::Usage;
        }
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    // Check them all first.
    let mut checked = Vec::new();
    let mut invalid = 0;
    for path in &paths {
        let src = match files::read(path) {
            Read::Ok(src) => src,
            Read::Invalid(d) => {
                eprint!("{}", crate::render::human_one(&d));
                invalid += 1;
                continue;
            }
            Read::Failed(msg) => {
                eprintln!("error: {msg}");
                return Exit::Usage;
            }
        };
        let c = rollout_policy::check_source(&src);
        for d in &c.diagnostics {
            eprint!("{}", crate::render::human_one(d));
        }
        match c.policy {
            Some(p) => checked.push((path.clone(), p, src.text().to_string())),
            None => invalid += 1,
        }
    }
    if invalid > 0 {
        eprintln!(
            "error: {invalid} of {} policies have errors; nothing was applied",
            paths.len()
        );
        return Exit::Problems;
    }
    super::on_cluster(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        "rolloutctl",
        async |client| {
            let mut exit = Exit::Ok;
            for (path, policy, text) in &checked {
                let (ns, name) = (&policy.target.namespace, &policy.target.name);
                let owner = match Isvc::new(client.clone(), ns, name).get().await {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!(
                            "error: {}: cannot read InferenceService {ns}/{name}: {e}",
                            path.display()
                        );
                        exit = Exit::Failed;
                        continue;
                    }
                };
                let api: Api<ModelRollout> = Api::namespaced(client.clone(), ns);
                let before = match api.get_opt(name).await {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("error: cannot read ModelRollout {ns}/{name}: {e}");
                        exit = Exit::Failed;
                        continue;
                    }
                };
                let what = match &before {
                    None => "created",
                    Some(b) if b.spec.policy == *text => "unchanged",
                    Some(_) => "configured",
                };
                if args.dry_run {
                    println!("modelrollout {ns}/{name} {what} (dry run)");
                    if let Some(b) = &before {
                        print!("{}", diff(&b.spec.policy, text));
                    }
                    continue;
                }
                if what == "unchanged" {
                    println!("modelrollout {ns}/{name} unchanged");
                    continue;
                }
                let desired = rollout_runner::run::desired(policy, text, &owner);
                match api
                    .patch(
                        name,
                        &PatchParams::apply(APPLY_MANAGER).force(),
                        &Patch::Apply(desired),
                    )
                    .await
                {
                    Ok(mr) => println!("modelrollout {}/{} {what}", ns, mr.name_any()),
                    Err(e) => {
                        let hint = if rollout_runner::isvc::not_found(&e) {
                            " (is the ModelRollout CRD installed? `kubectl apply -f deploy/crd.yaml`)"
                        } else {
                            ""
                        };
                        eprintln!("error: cannot apply ModelRollout {ns}/{name}: {e}{hint}");
                        exit = Exit::Failed;
                    }
                }
            }
            exit
        },
    )
}

/// The lines that differ between two texts, as `-`/`+` lines around their common start and end.
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let mut out = String::new();
    for l in &a[head..a.len() - tail] {
        out.push_str(&format!("  - {l}\n"));
    }
    for l in &b[head..b.len() - tail] {
        out.push_str(&format!("  + {l}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::diff;

    #[test]
    fn the_diff_shows_only_the_lines_that_changed() {
        assert_eq!(diff("a\nb\nc\n", "a\nB\nc\n"), "  - b\n  + B\n");
        assert_eq!(diff("a\n", "a\n"), "");
        assert_eq!(diff("a\n", "a\nb\n"), "  + b\n");
        assert_eq!(diff("a\nb\n", "b\n"), "  - a\n");
    }
}
