//! `twinlake passwd`: a user of a password file (the MQTT endpoint's or the query surfaces'),
//! added or changed.

use std::io::BufRead;
use std::path::Path;

pub(crate) fn passwd(file: &Path, user: &str, relay: bool, scram: bool) -> Result<(), String> {
    twinlake_model::Gateway::parse(user)
        .map_err(|e| format!("{user:?} cannot be a user: it names a gateway, and {e}"))?;
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .map_err(|e| format!("reading the password: {e}"))?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err("an empty password (give it on standard input)".to_owned());
    }
    let hash = if scram {
        twinlake_auth::ScramKeys::new(password)?.verifier()
    } else {
        twinlake_auth::hash_password(password)?
    };
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("reading {}: {e}", file.display())),
    };
    let others = existing
        .lines()
        .filter(|line| line.split(':').next() != Some(user));
    let role = if relay { ":relay" } else { "" };
    let mut lines: Vec<String> = others.map(str::to_owned).collect();
    lines.push(format!("{user}:{hash}{role}"));
    // A running endpoint reads the file when it changes: write it whole, then move it in.
    let temporary = file.with_extension("new");
    std::fs::write(&temporary, lines.join("\n") + "\n")
        .and_then(|()| std::fs::rename(&temporary, file))
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    eprintln!("{user} is in {}", file.display());
    Ok(())
}
