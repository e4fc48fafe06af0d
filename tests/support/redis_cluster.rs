//! A private Redis Cluster on loopback: three masters with a replica each,
//! `redis-server --cluster-enabled yes` on six free ports, joined by
//! `redis-cli --cluster create --cluster-replicas 1`. Killed when dropped.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, RedisServer};

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters and three replicas, once every node reports
    /// `cluster_state:ok`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With more `redis-server` arguments for every node (TLS, say).
    pub fn start_with(args: &[&str]) -> Self {
        let mut common = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            // Quick failover: a master that does not answer for a second
            // is replaced by its replica.
            "--cluster-node-timeout",
            "1000",
            // A master that lost its replica waits 5 s by default before
            // the full sync of a new one (for others to join it), and with
            // `replicas: 1` its writes are refused until then.
            "--repl-diskless-sync-delay",
            "0",
        ];
        common.extend_from_slice(args);
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                // The cluster bus would take the port + 10000 otherwise,
                // which another test's server may hold.
                let bus = free_port().to_string();
                let mut node_args = common.clone();
                node_args.extend(["--cluster-port", bus.as_str()]);
                RedisServer::start_with(&node_args)
            })
            .collect();
        let cluster = Self { nodes };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (scripts/test installs it)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        cluster.wait_until_ok(Duration::from_secs(20));
        cluster
    }

    /// The seed URLs, every node's.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits until every running node reports the cluster healthy and
    /// every running replica's link to its master is up (a write can wait
    /// for it).
    pub fn wait_until_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let replication = n.info("replication");
                n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes that are masters now, by index.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].is_running()
                    && self.nodes[i].info("replication").contains("role:master")
            })
            .collect()
    }

    /// The node (by index) that is the master serving `tag`'s slot.
    pub fn master_of(&self, tag: &str) -> usize {
        let asked = &self.nodes[self.masters()[0]];
        let slot: u16 = asked
            .cli(&["CLUSTER", "KEYSLOT", tag])
            .trim()
            .parse()
            .expect("a slot number");
        // `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slots>...`
        let nodes = asked.cli(&["CLUSTER", "NODES"]);
        let port: u16 = nodes
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .find(|fields| {
                fields.len() > 8
                    && fields[2].contains("master")
                    && !fields[2].contains("fail")
                    && fields[8..].iter().any(|range| {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                    })
            })
            .and_then(|fields| fields[1].split(['@', ':']).nth(1)?.parse().ok())
            .expect("a master serves every slot");
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("one of ours")
    }

    /// How many keys each master holds, in `masters()` order.
    pub fn keys_per_master(&self) -> Vec<u64> {
        self.masters()
            .into_iter()
            .map(|i| self.nodes[i].cli(&["DBSIZE"]).trim().parse().unwrap_or(0))
            .collect()
    }
}
