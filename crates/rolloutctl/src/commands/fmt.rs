use std::io::Read as _;
use std::path::Path;

use rollout_diagnostics::{Diagnostic, SourceFile};

use super::Exit;
use crate::cli::FmtArgs;
use crate::files::{self, Read};
use crate::render;

pub fn run(args: &FmtArgs) -> Exit {
    if args.paths.len() == 1 && args.paths[0] == Path::new("-") {
        return stdin(args.check);
    }
    let paths = match files::collect(&args.paths) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let mut exit = Exit::Ok;
    for path in paths {
        let src = match files::read(&path) {
            Read::Ok(src) => src,
            Read::Invalid(d) => {
                eprint!("{}", render::human_one(&d));
                exit = worst(exit, Exit::Problems);
                continue;
            }
            Read::Failed(msg) => {
                eprintln!("error: {msg}");
                exit = worst(exit, Exit::Usage);
                continue;
            }
        };
        match format(&src) {
            Err(ds) => {
                for d in ds {
                    eprint!("{}", render::human_one(&d));
                }
                exit = worst(exit, Exit::Problems);
            }
            Ok(formatted) if formatted == src.text() => {}
            Ok(formatted) => {
                if args.check {
                    println!("would reformat {}", path.display());
                    exit = worst(exit, Exit::Problems);
                } else if let Err(e) = std::fs::write(&path, formatted) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    exit = worst(exit, Exit::Usage);
                } else {
                    println!("formatted {}", path.display());
                }
            }
        }
    }
    exit
}

fn stdin(check: bool) -> Exit {
    let mut bytes = Vec::new();
    let cap = rollout_syntax::MAX_INPUT_BYTES as u64;
    if let Err(e) = std::io::stdin().take(cap + 1).read_to_end(&mut bytes) {
        eprintln!("error: cannot read standard input: {e}");
        return Exit::Usage;
    }
    if bytes.len() as u64 > cap {
        eprintln!("error: standard input is larger than the limit of {cap} bytes (R0005)");
        return Exit::Problems;
    }
    let src = match rollout_syntax::decode("<stdin>", bytes) {
        Ok(s) => s,
        Err(d) => {
            eprint!("{}", render::human_one(&d));
            return Exit::Problems;
        }
    };
    match format(&src) {
        Err(ds) => {
            for d in ds {
                eprint!("{}", render::human_one(&d));
            }
            Exit::Problems
        }
        Ok(out) => {
            if check {
                if out == src.text() {
                    Exit::Ok
                } else {
                    println!("would reformat <stdin>");
                    Exit::Problems
                }
            } else {
                print!("{out}");
                Exit::Ok
            }
        }
    }
}

fn format(src: &SourceFile) -> Result<String, Vec<Diagnostic>> {
    let file = rollout_syntax::parse(src)?;
    Ok(rollout_syntax::format(&file, src.text()))
}

fn worst(a: Exit, b: Exit) -> Exit {
    if (b as u8) > (a as u8) { b } else { a }
}
