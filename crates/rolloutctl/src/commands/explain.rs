use rollout_diagnostics::Code;

use super::Exit;
use crate::cli::ExplainArgs;

mod pages {
    include!(concat!(env!("OUT_DIR"), "/pages.rs"));
}

/// The documentation page of a code.
pub fn page(code: Code) -> Option<&'static str> {
    pages::PAGES
        .iter()
        .find(|(c, _)| *c == code.as_str())
        .map(|(_, p)| *p)
}

pub fn run(args: &ExplainArgs) -> Exit {
    if args.list {
        for c in Code::ALL {
            println!(
                "{}  {:<7}  {}",
                c.as_str(),
                c.severity().to_string(),
                c.title()
            );
        }
        return Exit::Ok;
    }
    let Some(text) = args.code.as_deref() else {
        eprintln!("error: give a code such as R1003, or --list");
        return Exit::Usage;
    };
    let Some(code) = Code::parse(text) else {
        eprintln!(
            "error: unknown diagnostic code `{text}`; `rolloutctl explain --list` shows them all"
        );
        return Exit::Usage;
    };
    match page(code) {
        Some(p) => {
            print!("{p}");
            Exit::Ok
        }
        None => {
            println!(
                "# {}: {}\n\n{}",
                code.as_str(),
                code.title(),
                code.default_help()
            );
            Exit::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_page_and_every_page_a_code() {
        for c in Code::ALL {
            let p =
                page(*c).unwrap_or_else(|| panic!("docs/diagnostics/{}.md is missing", c.as_str()));
            assert!(
                p.starts_with(&format!("# {}", c.as_str())),
                "{}.md must start with `# {}`",
                c.as_str(),
                c.as_str()
            );
        }
        for (code, _) in pages::PAGES {
            assert!(
                Code::parse(code).is_some(),
                "docs/diagnostics/{code}.md has no code in the registry"
            );
        }
    }
}
