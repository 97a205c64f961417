//! The operator CLI's arguments, as clap reads them: the API's address and token, and the
//! subcommands on requests, upgraded dumps and original uploads.

use std::path::PathBuf;

/// A request id argument: spelt as the API spells ids (no sign, no leading zeros).
fn id_arg(text: &str) -> Result<u64, String> {
    crate::api::parse_id(text).ok_or_else(|| "a request id is a positive integer".to_string())
}

#[derive(clap::Args)]
pub struct ClientArgs {
    /// Operator API base URL
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:2280",
        value_name = "URL"
    )]
    pub(super) admin: String,
    /// Admin token file (SFTPGATE_ADMIN_TOKEN wins)
    #[arg(
        long,
        global = true,
        default_value = "data/admin.token",
        value_name = "FILE"
    )]
    pub(super) token_file: PathBuf,
    /// Print the API's JSON instead of text
    #[arg(long, global = true)]
    pub(super) json: bool,
    /// CA certificate (PEM) to trust for an https:// --admin, besides the system's roots
    #[arg(long, global = true, value_name = "FILE")]
    pub(super) cacert: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum RequestCmd {
    /// Create or update a request
    Put {
        #[arg(value_parser = id_arg)]
        id: u64,
        #[arg(long)]
        filename: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// authorized_keys file of the customer's public keys
        #[arg(long, value_name = "FILE")]
        ssh_keys: Option<PathBuf>,
        #[arg(long)]
        state: Option<String>,
        /// RFC 3339 time, or "none" to clear
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// Show one request
    Show {
        #[arg(value_parser = id_arg)]
        id: u64,
    },
    /// List requests in id order: all of them (read a page of 1000 at a time), or with
    /// --limit one page, whose last line names the --after of the next
    List {
        /// Only this many (1 to 1000): one page
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only requests with ids above this one
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
        /// Only requests in this state
        #[arg(long)]
        state: Option<String>,
        /// Only requests updated at or after this RFC 3339 time
        #[arg(long, value_name = "TIME")]
        updated_since: Option<String>,
    },
    /// Change a request's state
    State {
        #[arg(value_parser = id_arg)]
        id: u64,
        state: String,
    },
    /// Revoke a request (its sessions are closed)
    Delete {
        #[arg(value_parser = id_arg)]
        id: u64,
        /// Also delete its files
        #[arg(long)]
        purge: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum UpgradedCmd {
    /// Upload the upgraded dump of a request
    Put {
        #[arg(value_parser = id_arg)]
        id: u64,
        file: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum OriginalCmd {
    /// Download the customer's upload of a request
    Get {
        #[arg(value_parser = id_arg)]
        id: u64,
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_spelt_as_the_api_spells_them() {
        assert_eq!(super::id_arg("10534"), Ok(10534));
        for bad in ["+5", "05", "0", "-1", "5x", ""] {
            assert!(super::id_arg(bad).is_err(), "{bad}");
        }
    }
}
