//! The MQTT client of either protocol version behind one face, so that the
//! session logic in `actor` is written once.
//!
//! MQTT 5 is the default because only it lets a broker say that it refused a
//! publish: a PUBACK carries a reason code, and one of 0x80 or more means the
//! message was not taken (mosquitto answers a publish its ACL denies with 0x87,
//! "not authorized"). Under MQTT 3.1.1 the same broker answers with an ordinary
//! PUBACK and drops the message, so a 3.1.1 gateway cannot tell a refusal from a
//! delivery (`docs/mqtt.md`). MQTT 5's CONNACK also carries the broker's Maximum
//! Packet Size, which the uplink honours by splitting batches.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    LastWill as LastWill5, Packet as Packet5, PubAckReason, PublishProperties,
};
use rumqttc::{NetworkOptions, Outgoing, TlsConfiguration, Transport};

use crate::config::Protocol;

/// What the session needs to know of one event of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The broker accepted the connection; MQTT 5 brokers may state the largest
    /// packet they take.
    ConnAck {
        max_packet_size: Option<u32>,
    },
    /// A publish left with this packet id (in request order).
    Published(u16),
    /// The broker answered the publish with this packet id; `refused` when its
    /// reason code is 0x80 or more (MQTT 5 only).
    PubAck {
        pkid: u16,
        refused: Option<Refusal>,
    },
    /// The broker answered a SUBSCRIBE; `granted` is false when it refused the
    /// subscription (an ACL that does not let the gateway read the topic).
    SubAck {
        granted: bool,
    },
    /// A message on a topic this client subscribed to (receipts).
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The DISCONNECT was written.
    DisconnectSent,
    Other,
}

/// A PUBACK reason code of 0x80 or more: the broker did not take the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u8,
    pub reason: &'static str,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:02X})", self.reason, self.code)
    }
}

/// The numeric reason code of a PUBACK, and whether it is a refusal.
fn puback_code(reason: &PubAckReason) -> (u8, &'static str) {
    match reason {
        PubAckReason::Success => (0x00, "success"),
        PubAckReason::NoMatchingSubscribers => (0x10, "no matching subscribers"),
        PubAckReason::UnspecifiedError => (0x80, "unspecified error"),
        PubAckReason::ImplementationSpecificError => (0x83, "implementation specific error"),
        PubAckReason::NotAuthorized => (0x87, "not authorized"),
        PubAckReason::TopicNameInvalid => (0x90, "topic name invalid"),
        PubAckReason::PacketIdentifierInUse => (0x91, "packet identifier in use"),
        PubAckReason::QuotaExceeded => (0x97, "quota exceeded"),
        PubAckReason::PayloadFormatInvalid => (0x99, "payload format invalid"),
    }
}

/// A refusal for a reason code, `None` below 0x80 (success, no subscribers).
pub fn refusal(reason: &PubAckReason) -> Option<Refusal> {
    let (code, reason) = puback_code(reason);
    (code >= 0x80).then_some(Refusal { code, reason })
}

/// A connection failure of either client.
#[derive(Debug)]
pub enum LinkError {
    V311(rumqttc::ConnectionError),
    V5(rumqttc::v5::ConnectionError),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::V311(e) => e.fmt(f),
            LinkError::V5(e) => e.fmt(f),
        }
    }
}

/// How to connect, whatever the protocol.
pub struct LinkOptions {
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    pub keep_alive: Duration,
    /// Publishes in flight at most (the MQTT 5 broker's Receive Maximum may lower it).
    pub inflight: u16,
    /// The largest packet this client reads.
    pub max_incoming: u32,
    /// 3.1.1 only: the largest packet this client writes (MQTT 5 takes the
    /// broker's figure from its CONNACK).
    pub max_outgoing: u32,
    pub will_topic: String,
    pub will_payload: Vec<u8>,
}

/// The request side of the client.
pub enum LinkClient {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The event side of the client; poll it on a task of its own (not cancel-safe).
pub enum LinkLoop {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// A new client of `protocol` with a request channel of `capacity`; clean
/// session, last will retained at QoS 1, TCP_NODELAY.
pub fn client(protocol: Protocol, o: LinkOptions, capacity: usize) -> (LinkClient, LinkLoop) {
    match protocol {
        Protocol::V311 => {
            let mut m = rumqttc::MqttOptions::new(o.client_id, o.host, o.port);
            m.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(o.tls)));
            m.set_keep_alive(o.keep_alive);
            m.set_clean_session(true);
            m.set_inflight(o.inflight);
            m.set_max_packet_size(o.max_incoming as usize, o.max_outgoing as usize);
            m.set_last_will(rumqttc::LastWill::new(
                o.will_topic,
                o.will_payload,
                rumqttc::QoS::AtLeastOnce,
                true,
            ));
            let (c, mut events) = rumqttc::AsyncClient::new(m, capacity);
            // Without it, the tail of each large message waits for the delayed
            // ACK of the one before (Nagle), tens of milliseconds a message.
            events.network_options.set_tcp_nodelay(true);
            (LinkClient::V311(c), LinkLoop::V311(Box::new(events)))
        }
        Protocol::V5 => {
            let mut m = rumqttc::v5::MqttOptions::new(o.client_id, o.host, o.port);
            m.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(o.tls)));
            m.set_keep_alive(o.keep_alive);
            m.set_clean_start(true);
            m.set_outgoing_inflight_upper_limit(o.inflight);
            m.set_max_packet_size(Some(o.max_incoming));
            m.set_last_will(LastWill5::new(
                o.will_topic,
                o.will_payload,
                QoS5::AtLeastOnce,
                true,
                None,
            ));
            let mut net = NetworkOptions::new();
            net.set_tcp_nodelay(true);
            m.set_network_options(net);
            let (c, events) = rumqttc::v5::AsyncClient::new(m, capacity);
            (LinkClient::V5(c), LinkLoop::V5(Box::new(events)))
        }
    }
}

impl LinkClient {
    /// Queues a QoS 1 publish; `content_type` is sent as MQTT 5's Content Type
    /// property (3.1.1 has no place for it).
    pub fn try_publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        content_type: Option<&str>,
    ) -> Result<(), String> {
        match self {
            LinkClient::V311(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
            LinkClient::V5(c) => match content_type {
                Some(t) => c.try_publish_with_properties(
                    topic,
                    QoS5::AtLeastOnce,
                    retain,
                    payload,
                    PublishProperties {
                        content_type: Some(t.to_owned()),
                        ..PublishProperties::default()
                    },
                ),
                None => c.try_publish(topic, QoS5::AtLeastOnce, retain, payload),
            }
            .map_err(|e| e.to_string()),
        }
    }

    /// Queues a QoS 1 subscription to `topic`.
    pub fn try_subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            LinkClient::V311(c) => c
                .try_subscribe(topic, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            LinkClient::V5(c) => c
                .try_subscribe(topic, QoS5::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), String> {
        match self {
            LinkClient::V311(c) => c.try_disconnect().map_err(|e| e.to_string()),
            LinkClient::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

impl LinkLoop {
    /// The next event, or the error that ended the connection.
    pub async fn poll(&mut self) -> Result<LinkEvent, LinkError> {
        match self {
            LinkLoop::V311(events) => {
                use rumqttc::{Event, Packet};
                Ok(match events.poll().await.map_err(LinkError::V311)? {
                    Event::Incoming(Packet::ConnAck(_)) => LinkEvent::ConnAck {
                        max_packet_size: None,
                    },
                    Event::Incoming(Packet::PubAck(ack)) => LinkEvent::PubAck {
                        pkid: ack.pkid,
                        refused: None,
                    },
                    Event::Incoming(Packet::SubAck(ack)) => LinkEvent::SubAck {
                        granted: !ack.return_codes.is_empty()
                            && ack
                                .return_codes
                                .iter()
                                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                    },
                    Event::Incoming(Packet::Publish(p)) => LinkEvent::Message {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                    },
                    Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Published(pkid),
                    Event::Outgoing(Outgoing::Disconnect) => LinkEvent::DisconnectSent,
                    _ => LinkEvent::Other,
                })
            }
            LinkLoop::V5(events) => {
                use rumqttc::v5::Event;
                Ok(match events.poll().await.map_err(LinkError::V5)? {
                    Event::Incoming(Packet5::ConnAck(ack)) => LinkEvent::ConnAck {
                        max_packet_size: ack.properties.and_then(|p| p.max_packet_size),
                    },
                    Event::Incoming(Packet5::PubAck(ack)) => LinkEvent::PubAck {
                        pkid: ack.pkid,
                        refused: refusal(&ack.reason),
                    },
                    Event::Incoming(Packet5::SubAck(ack)) => LinkEvent::SubAck {
                        granted: !ack.return_codes.is_empty()
                            && ack.return_codes.iter().all(|c| {
                                matches!(
                                    c,
                                    rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                                )
                            }),
                    },
                    Event::Incoming(Packet5::Publish(p)) => LinkEvent::Message {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                    },
                    Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Published(pkid),
                    Event::Outgoing(Outgoing::Disconnect) => LinkEvent::DisconnectSent,
                    _ => LinkEvent::Other,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_from_0x80_are_refusals() {
        assert_eq!(refusal(&PubAckReason::Success), None);
        assert_eq!(refusal(&PubAckReason::NoMatchingSubscribers), None);
        let r = refusal(&PubAckReason::NotAuthorized).unwrap();
        assert_eq!(r.code, 135);
        assert_eq!(r.to_string(), "not authorized (0x87)");
        for reason in [
            PubAckReason::UnspecifiedError,
            PubAckReason::ImplementationSpecificError,
            PubAckReason::TopicNameInvalid,
            PubAckReason::PacketIdentifierInUse,
            PubAckReason::QuotaExceeded,
            PubAckReason::PayloadFormatInvalid,
        ] {
            assert!(
                refusal(&reason).is_some_and(|r| r.code >= 0x80),
                "{reason:?}"
            );
        }
    }
}
