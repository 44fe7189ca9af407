//! `ramify completion bash|zsh|fish`.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::{Cli, CompletionShell};

/// Writes the completion script for `shell` to stdout, for the name the program was
/// started as (`ramify`, or `kubectl-ramify` for the plugin).
pub fn print(shell: CompletionShell, plugin: bool) {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let name = if plugin {
        crate::backend::PLUGIN_NAME
    } else {
        "ramify"
    };
    clap_complete::generate(shell, &mut Cli::command(), name, &mut std::io::stdout());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ramify", &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("snapshot") && text.contains("suspend-after"),
                "{shell}"
            );
        }
    }

    #[test]
    fn plugin_scripts_complete_the_plugin_name_and_kubectl_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                crate::backend::PLUGIN_NAME,
                &mut out,
            );
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("kubectl-ramify"), "{shell}");
            assert!(
                text.contains("all-namespaces") && text.contains("kubeconfig"),
                "{shell}"
            );
        }
    }
}
