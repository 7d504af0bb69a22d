//! The cluster zone's records, built from the route policy. Pure (no sockets, no clock), so
//! that every naming rule is unit-tested; [`super::server`] only encodes what
//! [`Records::answer`] decides.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use drover_proto::model::{RouteEndpoint, RoutePolicy};
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL of every record, and the SOA minimum (how long a negative answer is cached): 5 s, as
/// CoreDNS's kubernetes plugin, so that clients notice a moved or removed replica quickly.
pub const TTL: u32 = 5;

/// What the cluster's DNS answers to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name has records of the type asked for.
    Records {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section: the A records of SRV targets.
        additionals: Vec<Record>,
    },
    /// The name exists but has no records of that type (NOERROR with no answer).
    NoData {
        /// The zone's SOA for the authority section, when the name is in the cluster zone
        /// (a short name such as `web.` is not, so it gets none).
        soa: Option<Record>,
    },
    /// The name is in the cluster zone and does not exist (authoritative NXDOMAIN).
    NxDomain {
        /// The zone's SOA, for the authority section (negative caching, RFC 2308).
        soa: Record,
    },
    /// Not a cluster name: the query goes to the upstream resolvers.
    NotOurs,
}

/// One name of the zone. A name with no data is an empty non-terminal (an ancestor of a
/// name that exists, like `svc.DOMAIN`): it answers NODATA, never NXDOMAIN, as a resolver
/// may take NXDOMAIN to mean that nothing below the name exists (RFC 8020).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    /// Addresses of its A records.
    a: BTreeSet<Ipv4Addr>,
    /// Its SRV records: port and target (lowercase, without the trailing dot).
    srv: BTreeSet<(u16, String)>,
    /// A service's own name (`NAME.NAMESPACE.svc.DOMAIN`), the only kind of name that the
    /// short forms (`NAME`, `NAME.NAMESPACE`, `NAME.NAMESPACE.svc`) resolve to.
    service: bool,
}

/// The records of the cluster zone (`DOMAIN`) for one namespace, as of one route policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// The domain's labels, lowercase (`["cluster", "local"]`).
    domain: Vec<String>,
    /// The domain, lowercase, without the trailing dot: the key of the zone's apex.
    apex: String,
    /// The namespace, lowercase.
    namespace: String,
    /// Every name of the zone, keyed by its lowercase form without the trailing dot.
    names: BTreeMap<String, Node>,
    /// The zone's SOA record.
    soa: Record,
}

impl Records {
    /// A zone with no service (before the first route policy): names in `domain` are
    /// NXDOMAIN, others go upstream. `domain` is like `cluster.local` (case and a trailing
    /// dot do not matter), `namespace` like `default`.
    pub fn empty(domain: &str, namespace: &str) -> Records {
        Records::with_serial(domain, namespace, 0)
    }

    /// The zone for `policy`: for each service, its cluster address, or for a headless one
    /// the node addresses of its endpoints that `ready` accepts (in the agent, the policy's
    /// endpoints that gossip says are alive and healthy, [`crate::routes::endpoint`]).
    /// Services and port names that are not DNS labels are left out.
    pub fn build(
        policy: &RoutePolicy,
        ready: impl Fn(&RouteEndpoint) -> bool,
        domain: &str,
        namespace: &str,
    ) -> Records {
        // SOA serials wrap (RFC 1982 arithmetic), so keeping the low 32 bits is right.
        let serial = (policy.version & u64::from(u32::MAX)) as u32;
        let mut records = Records::with_serial(domain, namespace, serial);

        // A service has one entry per port; any of them may carry its cluster address.
        let mut cluster_ips: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        for route in &policy.services {
            if let (Some(name), Some(ip)) = (dns_label(&route.service), route.cluster_ip) {
                cluster_ips.entry(name).or_insert(ip);
            }
        }

        for route in &policy.services {
            let Some(service) = dns_label(&route.service) else {
                continue;
            };
            let service_name = records.fqdn(&service);
            records.node(&service_name).service = true;
            let srv_name = route
                .port_name
                .as_deref()
                .and_then(dns_label)
                .map(|port| format!("_{port}._tcp.{service_name}"));

            if let Some(&ip) = cluster_ips.get(&service) {
                records.node(&service_name).a.insert(ip);
                if let Some(srv_name) = srv_name {
                    let target = (route.port, service_name.clone());
                    records.node(&srv_name).srv.insert(target);
                }
                continue;
            }

            // Headless: the replicas themselves, at their node address and host port. The
            // port's name exists even with none ready (NODATA, not NXDOMAIN).
            if let Some(srv_name) = &srv_name {
                records.node(srv_name);
            }
            for endpoint in route.endpoints.iter().filter(|e| ready(e)) {
                let Some(address) = endpoint.address else {
                    continue;
                };
                let IpAddr::V4(ip) = address.ip() else {
                    continue;
                };
                let Some(label) = endpoint_label(&endpoint.allocation_id) else {
                    continue;
                };
                let host = format!("{label}.{service_name}");
                records.node(&service_name).a.insert(ip);
                records.node(&host).a.insert(ip);
                if let Some(srv_name) = &srv_name {
                    records
                        .node(srv_name)
                        .srv
                        .insert((address.port(), host.clone()));
                }
            }
        }

        records.add_empty_non_terminals();
        records
    }

    /// The answer to a question for `name` (any case, with or without the trailing dot)
    /// and `record_type`. Records are owned by `name` as asked.
    pub fn answer(&self, name: &Name, record_type: RecordType) -> Answer {
        let labels: Vec<String> = name
            .iter()
            .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
            .collect();
        let in_zone = labels.len() >= self.domain.len() && labels.ends_with(&self.domain);
        // A label holding a dot would join into another name's key; no such name exists.
        let plain = labels.iter().all(|l| !l.is_empty() && !l.contains('.'));

        if in_zone {
            let key = labels.join(".");
            return match self.names.get(&key).filter(|_| plain) {
                Some(node) => self.data(name, &key, node, record_type, true),
                None => Answer::NxDomain {
                    soa: self.soa.clone(),
                },
            };
        }

        // The short forms of a service's name; anything else (`localhost`, an external
        // name with part of the search path appended) belongs to the upstreams.
        let short = match labels.as_slice() {
            [service] => Some(service),
            [service, ns] if *ns == self.namespace => Some(service),
            [service, ns, svc] if *ns == self.namespace && svc == "svc" => Some(service),
            _ => None,
        };
        let Some(service) = short.filter(|_| plain) else {
            return Answer::NotOurs;
        };
        let key = self.fqdn(service);
        match self.names.get(&key) {
            Some(node) if node.service => self.data(name, &key, node, record_type, false),
            _ => Answer::NotOurs,
        }
    }

    /// The zone's SOA record.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    fn with_serial(domain: &str, namespace: &str, serial: u32) -> Records {
        let domain: Vec<String> = domain
            .split('.')
            .filter(|l| !l.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let apex = domain.join(".");
        // An invalid domain is the configuration's to reject; the zone still works, with a
        // root-owned SOA.
        let name = |prefix: &str| {
            Name::from_ascii(format!("{prefix}{apex}.")).unwrap_or_else(|_| Name::root())
        };
        let soa = SOA::new(
            name("ns.dns."),
            name("hostmaster."),
            serial,
            7200,
            1800,
            86400,
            TTL,
        );
        let soa = Record::from_rdata(name(""), TTL, RData::SOA(soa));
        let mut names = BTreeMap::new();
        names.insert(apex.clone(), Node::default());
        Records {
            domain,
            apex,
            namespace: namespace.trim_end_matches('.').to_ascii_lowercase(),
            names,
            soa,
        }
    }

    /// A service's own name: `NAME.NAMESPACE.svc.DOMAIN`, without the trailing dot.
    fn fqdn(&self, service: &str) -> String {
        format!("{service}.{}.svc.{}", self.namespace, self.apex)
    }

    fn node(&mut self, key: &str) -> &mut Node {
        self.names.entry(key.to_string()).or_default()
    }

    /// Adds every ancestor of every name, up to the apex, as a name without data.
    fn add_empty_non_terminals(&mut self) {
        let keys: Vec<String> = self.names.keys().cloned().collect();
        for key in keys {
            let mut rest = key.as_str();
            while rest.len() > self.apex.len() {
                let Some((_, parent)) = rest.split_once('.') else {
                    break;
                };
                self.names.entry(parent.to_string()).or_default();
                rest = parent;
            }
        }
    }

    /// The records of `node` (whose key is `key`) of `record_type`, owned by `name`.
    fn data(
        &self,
        name: &Name,
        key: &str,
        node: &Node,
        record_type: RecordType,
        in_zone: bool,
    ) -> Answer {
        let any = record_type == RecordType::ANY;
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if any || record_type == RecordType::A {
            answers.extend(a_records(name, &node.a));
        }
        if any || record_type == RecordType::SRV {
            for (port, target) in &node.srv {
                let Ok(target_name) = Name::from_ascii(format!("{target}.")) else {
                    continue;
                };
                if let Some(target_node) = self.names.get(target) {
                    additionals.extend(a_records(&target_name, &target_node.a));
                }
                let srv = SRV::new(0, 100, *port, target_name);
                answers.push(Record::from_rdata(name.clone(), TTL, RData::SRV(srv)));
            }
        }
        if (any || record_type == RecordType::SOA) && key == self.apex {
            let mut soa = self.soa.clone();
            soa.name = name.clone();
            answers.push(soa);
        }
        if answers.is_empty() {
            Answer::NoData {
                soa: in_zone.then(|| self.soa.clone()),
            }
        } else {
            Answer::Records {
                answers,
                additionals,
            }
        }
    }
}

fn a_records<'a>(
    name: &'a Name,
    addresses: &'a BTreeSet<Ipv4Addr>,
) -> impl Iterator<Item = Record> + 'a {
    addresses
        .iter()
        .map(|ip| Record::from_rdata(name.clone(), TTL, RData::A(A(*ip))))
}

/// `text` if it is a DNS-1123 label (lowercase letters, digits and dashes).
fn dns_label(text: &str) -> Option<String> {
    // The rule services' and ports' names were checked against when applied.
    drover_proto::manifest::dns_label(text)
        .ok()
        .map(|()| text.to_string())
}

/// An allocation id made a DNS label: lowercase, anything but letters, digits and dashes
/// becomes a dash (`web.12` → `web-12`).
fn endpoint_label(allocation_id: &str) -> Option<String> {
    let label: String = allocation_id
        .chars()
        .take(63)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    (!label.is_empty()).then_some(label)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use drover_proto::model::{ServiceRoute, Strategy};

    use super::*;

    fn endpoint(id: &str, address: &str) -> RouteEndpoint {
        RouteEndpoint {
            allocation_id: id.to_string(),
            node: "n1".into(),
            revision: 1,
            address: address.parse().ok(),
            weight: 1,
            workload: "w".into(),
            pool: 1,
            container_port: 8080,
        }
    }

    fn route(
        service: &str,
        port: u16,
        port_name: Option<&str>,
        cluster_ip: Option<&str>,
        endpoints: Vec<RouteEndpoint>,
    ) -> ServiceRoute {
        ServiceRoute {
            service: service.into(),
            port,
            port_name: port_name.map(str::to_string),
            cluster_ip: cluster_ip.map(|ip| ip.parse().expect("an address")),
            node_port: None,
            strategy: Strategy::RoundRobin,
            pool_weights: BTreeMap::new(),
            endpoints,
        }
    }

    /// `web`: cluster address 10.96.0.20, ports 80 (`http`) and 9090 (unnamed).
    /// `db`: headless, port 5432 (`pg`), replicas db.1 (ready), db.2 (ready, same node as
    /// db.1), db.3 (not ready), db.4 (no address yet), db.5 (ready).
    fn policy() -> RoutePolicy {
        let db = vec![
            endpoint("db.1", "192.168.1.10:31001"),
            endpoint("DB.2", "192.168.1.10:31002"),
            endpoint("db.3", "192.168.1.12:31003"),
            endpoint("db.4", ""),
            endpoint("db.5", "192.168.1.11:31005"),
        ];
        RoutePolicy {
            version: 7,
            store_id: "s".into(),
            services: vec![
                route("web", 80, Some("http"), Some("10.96.0.20"), vec![]),
                route("web", 9090, None, Some("10.96.0.20"), vec![]),
                route("db", 5432, Some("pg"), None, db),
                route("empty", 80, Some("http"), None, vec![]),
            ],
        }
    }

    fn ready(e: &RouteEndpoint) -> bool {
        e.allocation_id != "db.3"
    }

    fn records() -> Records {
        Records::build(&policy(), ready, "cluster.local", "default")
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("a name")
    }

    fn ask(text: &str, record_type: RecordType) -> Answer {
        records().answer(&name(text), record_type)
    }

    fn a(owner: &str, ip: &str) -> Record {
        Record::from_rdata(
            name(owner),
            TTL,
            RData::A(A(ip.parse().expect("an address"))),
        )
    }

    fn srv(owner: &str, port: u16, target: &str) -> Record {
        let srv = SRV::new(0, 100, port, name(target));
        Record::from_rdata(name(owner), TTL, RData::SRV(srv))
    }

    fn found(answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        Answer::Records {
            answers,
            additionals,
        }
    }

    fn nxdomain() -> Answer {
        Answer::NxDomain {
            soa: records().soa().clone(),
        }
    }

    fn nodata() -> Answer {
        Answer::NoData {
            soa: Some(records().soa().clone()),
        }
    }

    #[test]
    fn a_service_name_answers_its_cluster_address_in_every_form() {
        for form in [
            "web",
            "web.",
            "web.default",
            "web.default.",
            "web.default.svc",
            "web.default.svc.",
            "web.default.svc.cluster.local",
            "web.default.svc.cluster.local.",
        ] {
            assert_eq!(
                ask(form, RecordType::A),
                found(vec![a(form, "10.96.0.20")], vec![]),
                "{form}"
            );
        }
    }

    #[test]
    fn names_are_case_insensitive_and_answered_as_asked() {
        let asked = "WeB.DeFault.SVC.Cluster.LOCAL.";
        let answer = ask(asked, RecordType::A);
        assert_eq!(answer, found(vec![a(asked, "10.96.0.20")], vec![]));
        let Answer::Records { answers, .. } = answer else {
            panic!("records");
        };
        assert!(answers[0].name.eq_case(&name(asked)));
        assert_eq!(
            ask("WEB", RecordType::A),
            found(vec![a("WEB", "10.96.0.20")], vec![])
        );
        assert_eq!(
            ask("_HTTP._TCP.Web.default.svc.cluster.local.", RecordType::SRV),
            ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV)
        );
    }

    #[test]
    fn a_headless_service_answers_the_distinct_nodes_of_its_ready_endpoints() {
        let fqdn = "db.default.svc.cluster.local.";
        // db.1 and db.2 share a node; db.3 is not ready; db.4 has no address.
        assert_eq!(
            ask(fqdn, RecordType::A),
            found(
                vec![a(fqdn, "192.168.1.10"), a(fqdn, "192.168.1.11")],
                vec![]
            )
        );
        assert_eq!(
            ask("db", RecordType::A),
            found(
                vec![a("db", "192.168.1.10"), a("db", "192.168.1.11")],
                vec![]
            )
        );
    }

    #[test]
    fn a_headless_service_without_ready_endpoints_has_no_data() {
        assert_eq!(
            ask("empty.default.svc.cluster.local.", RecordType::A),
            nodata()
        );
        // It exists, so its short name is answered here too, without the zone's SOA.
        assert_eq!(ask("empty", RecordType::A), Answer::NoData { soa: None });
        let none_ready = Records::build(&policy(), |_| false, "cluster.local", "default");
        assert_eq!(
            none_ready.answer(&name("db.default.svc.cluster.local."), RecordType::A),
            Answer::NoData {
                soa: Some(none_ready.soa().clone())
            }
        );
    }

    #[test]
    fn ready_endpoints_of_a_headless_service_have_their_own_names() {
        for (label, ip) in [("db-1", "192.168.1.10"), ("db-2", "192.168.1.10")] {
            let host = format!("{label}.db.default.svc.cluster.local.");
            assert_eq!(ask(&host, RecordType::A), found(vec![a(&host, ip)], vec![]));
        }
        assert_eq!(
            ask("db-3.db.default.svc.cluster.local.", RecordType::A),
            nxdomain()
        );
        assert_eq!(
            ask("db-4.db.default.svc.cluster.local", RecordType::A),
            nxdomain()
        );
        // The short forms are for services only.
        assert_eq!(ask("db-1.db", RecordType::A), Answer::NotOurs);
    }

    #[test]
    fn srv_of_a_cluster_ip_service_names_the_service() {
        let owner = "_http._tcp.web.default.svc.cluster.local.";
        let target = "web.default.svc.cluster.local.";
        assert_eq!(
            ask(owner, RecordType::SRV),
            found(vec![srv(owner, 80, target)], vec![a(target, "10.96.0.20")])
        );
    }

    #[test]
    fn srv_of_a_headless_service_names_each_ready_endpoint_at_its_host_port() {
        let owner = "_pg._tcp.db.default.svc.cluster.local";
        let target = |label: &str| format!("{label}.db.default.svc.cluster.local.");
        assert_eq!(
            ask(owner, RecordType::SRV),
            found(
                vec![
                    srv(owner, 31001, &target("db-1")),
                    srv(owner, 31002, &target("db-2")),
                    srv(owner, 31005, &target("db-5")),
                ],
                vec![
                    a(&target("db-1"), "192.168.1.10"),
                    a(&target("db-2"), "192.168.1.10"),
                    a(&target("db-5"), "192.168.1.11"),
                ]
            )
        );
    }

    #[test]
    fn srv_needs_a_named_port_and_tcp() {
        assert_eq!(
            ask("_9090._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            nxdomain()
        );
        assert_eq!(
            ask("_http._udp.web.default.svc.cluster.local.", RecordType::SRV),
            nxdomain()
        );
        assert_eq!(
            ask(
                "_http._tcp.empty.default.svc.cluster.local.",
                RecordType::SRV
            ),
            nodata()
        );
        // SRV names have no short forms.
        assert_eq!(ask("_http._tcp.web", RecordType::SRV), Answer::NotOurs);
    }

    #[test]
    fn other_types_of_existing_names_have_no_data() {
        for (asked, record_type) in [
            ("web.default.svc.cluster.local.", RecordType::AAAA),
            ("web.default.svc.cluster.local.", RecordType::TXT),
            ("web.default.svc.cluster.local.", RecordType::SRV),
            ("db-1.db.default.svc.cluster.local.", RecordType::AAAA),
            ("_http._tcp.web.default.svc.cluster.local.", RecordType::A),
        ] {
            assert_eq!(ask(asked, record_type), nodata(), "{asked} {record_type}");
        }
        assert_eq!(ask("web", RecordType::AAAA), Answer::NoData { soa: None });
        assert_eq!(
            ask("web.default.svc", RecordType::MX),
            Answer::NoData { soa: None }
        );
    }

    #[test]
    fn ancestors_of_names_exist_without_data() {
        for asked in [
            "cluster.local.",
            "svc.cluster.local.",
            "default.svc.cluster.local.",
            "_tcp.web.default.svc.cluster.local.",
        ] {
            assert_eq!(ask(asked, RecordType::A), nodata(), "{asked}");
        }
        // The apex holds the SOA.
        let Answer::Records { answers, .. } = ask("Cluster.Local.", RecordType::SOA) else {
            panic!("the apex answers SOA");
        };
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].data, records().soa().data);
    }

    #[test]
    fn other_names_in_the_zone_do_not_exist() {
        for asked in [
            "nope.default.svc.cluster.local.",
            "web.other.svc.cluster.local.",
            "web.default.pod.cluster.local",
            "google.com.default.svc.cluster.local.",
            "google.com.cluster.local.",
            "x.y.web.default.svc.cluster.local.",
        ] {
            assert_eq!(ask(asked, RecordType::A), nxdomain(), "{asked}");
        }
        let Answer::NxDomain { soa } = nxdomain() else {
            unreachable!()
        };
        let RData::SOA(data) = &soa.data else {
            panic!("an SOA");
        };
        assert_eq!((soa.ttl, data.minimum, data.serial), (TTL, TTL, 7));
        assert_eq!(soa.name, name("cluster.local."));
    }

    #[test]
    fn names_outside_the_zone_are_not_ours() {
        for asked in [
            "localhost",
            "localhost.",
            "nope",
            "nope.default",
            "nope.default.svc",
            "example.com.",
            "web.other",
            "web.default.svc.example.com",
            "www.example.com.default",
            ".",
        ] {
            assert_eq!(ask(asked, RecordType::A), Answer::NotOurs, "{asked}");
        }
    }

    #[test]
    fn ttl_is_five_seconds() {
        let Answer::Records {
            answers,
            additionals,
        } = ask("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV)
        else {
            panic!("records");
        };
        assert!(answers.iter().chain(&additionals).all(|r| r.ttl == 5));
    }

    #[test]
    fn the_domain_and_namespace_are_normalized() {
        let other = Records::build(&policy(), ready, "Cluster.Local.", "Default");
        assert_eq!(other, records());
        let empty = Records::empty("cluster.local", "default");
        assert_eq!(
            empty.answer(&name("web.default.svc.cluster.local."), RecordType::A),
            Answer::NxDomain {
                soa: empty.soa().clone()
            }
        );
        assert_eq!(empty.answer(&name("web"), RecordType::A), Answer::NotOurs);
    }

    #[test]
    fn names_that_are_not_labels_are_left_out() {
        let mut policy = policy();
        policy.services.push(route(
            "bad.name",
            80,
            Some("http"),
            Some("10.96.0.30"),
            vec![],
        ));
        policy.services.push(route(
            "ok",
            80,
            Some("bad_port"),
            Some("10.96.0.31"),
            vec![],
        ));
        let records = Records::build(&policy, ready, "cluster.local", "default");
        assert_eq!(
            records.answer(&name("bad.name.default.svc.cluster.local."), RecordType::A),
            Answer::NxDomain {
                soa: records.soa().clone()
            }
        );
        assert!(matches!(
            records.answer(&name("ok"), RecordType::A),
            Answer::Records { .. }
        ));
        assert!(matches!(
            records.answer(
                &name("_bad_port._tcp.ok.default.svc.cluster.local."),
                RecordType::SRV
            ),
            Answer::NxDomain { .. }
        ));
    }

    #[test]
    fn ipv6_endpoints_get_no_a_record() {
        let address: SocketAddr = "[fd00::1]:31000".parse().expect("an address");
        let mut e = endpoint("v6.1", "");
        e.address = Some(address);
        let policy = RoutePolicy {
            version: 1,
            store_id: "s".into(),
            services: vec![route("v6", 80, None, None, vec![e])],
        };
        let records = Records::build(&policy, |_| true, "cluster.local", "default");
        assert_eq!(
            records.answer(&name("v6"), RecordType::A),
            Answer::NoData { soa: None }
        );
    }

    #[test]
    fn endpoint_labels() {
        assert_eq!(endpoint_label("web.12").as_deref(), Some("web-12"));
        assert_eq!(endpoint_label("Web_A.3").as_deref(), Some("web-a-3"));
        assert_eq!(endpoint_label(""), None);
        assert_eq!(endpoint_label(&"x".repeat(80)).map(|l| l.len()), Some(63));
    }
}
