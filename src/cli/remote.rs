//! Commands that talk to a running node over HTTP: `status` (its own status, or its children
//! with `--children`) and `deactivate NAME` (free a child's name at this parent).

use anyhow::Context;
use connected_registry::status::{self, children::ChildList, Status};

/// Where the node is and who asks.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's base URL.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    url: String,
    /// `NAME:PASSWORD` of a token, where the node requires credentials.
    #[arg(long, env = "CONNECTED_REGISTRY_USER")]
    user: Option<String>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// List the node's children (name, mode, connection state, last sync) instead.
    #[arg(long)]
    children: bool,
    /// Print the JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DeactivateArgs {
    /// The child connected registry's name.
    name: String,
    #[command(flatten)]
    node: NodeArgs,
}

/// `connected-registry status [--children]`: fetch and print.
pub fn show_status(args: StatusArgs) -> anyhow::Result<()> {
    if args.children {
        let body = call(&args.node, reqwest::Method::GET, "registries")?;
        let list: ChildList = serde_json::from_str(&body)
            .context("the node did not answer with a list of children")?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            let own = call(&args.node, reqwest::Method::GET, "status")?;
            let own: Status = serde_json::from_str(&own)
                .context("the node did not answer with a status document")?;
            print!("{}", status::children::render(&list, &own.name));
        }
        return Ok(());
    }
    let body = call(&args.node, reqwest::Method::GET, "status")?;
    let status: Status =
        serde_json::from_str(&body).context("the node did not answer with a status document")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status::table::render(&status));
    }
    Ok(())
}

/// `connected-registry deactivate NAME`: at this parent, let another instance of NAME activate.
pub fn deactivate(args: DeactivateArgs) -> anyhow::Result<()> {
    let path = format!("registries/{}/deactivate", args.name);
    let body = call(&args.node, reqwest::Method::POST, &path)?;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if answer["deactivated"] == true {
        println!(
            "{} deactivated: another instance may activate now",
            args.name
        );
    } else {
        println!("{} was not active", args.name);
    }
    Ok(())
}

/// One request to `…/acr/connected-registry/v1/<path>`; the body on success.
fn call(node: &NodeArgs, method: reqwest::Method, path: &str) -> anyhow::Result<String> {
    let base = node.url.trim_end_matches('/');
    let url = format!("{base}/acr/connected-registry/v1/{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .context("building the HTTP client")?;
        let mut request = client.request(method.clone(), &url);
        if method == reqwest::Method::POST {
            request = request.header("Content-Type", "application/json").body("{}");
        }
        if let Some(user) = &node.user {
            let (name, password) = user
                .split_once(':')
                .context("--user must be NAME:PASSWORD")?;
            request = request.basic_auth(name, Some(password));
        }
        let response = request.send().await.with_context(|| {
            format!("cannot reach the registry at {base} (is `connected-registry serve` running there?)")
        })?;
        let code = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        anyhow::ensure!(code.is_success(), "{method} {url} answered {code}: {body}");
        anyhow::Ok(body)
    })
}
