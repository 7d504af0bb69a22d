//! Reading manifest files, directories and standard input.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// Reads every manifest named by `paths`: files, directories (their *.yaml / *.yml files,
/// sorted, not recursive) or `-` for standard input. Returns (name, text) pairs.
pub fn read_manifests(paths: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for path in paths {
        if path == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading manifests from standard input")?;
            out.push(("-".to_string(), text));
            continue;
        }
        let p = Path::new(path);
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {path}"))?;
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list directory {path}"))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("cannot list directory {path}"))?
                .into_iter()
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file()
                        && matches!(f.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                anyhow::bail!("directory {path} holds no *.yaml or *.yml files");
            }
            for file in entries {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                out.push((file.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {path}"))?;
            out.push((path.clone(), text));
        }
    }
    Ok(out)
}
