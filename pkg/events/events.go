// Package events turns job and step state changes into the messages clients see (REST /events and the
// WebSocket) and fans them out across processes through Redis pub/sub.
package events

import (
	"encoding/json"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/pubsub"
	"github.com/cao-run/cao/pkg/store"
)

// channelName is the last part of the Redis pub/sub channel CAO processes publish committed events on;
// Channel gives the whole name, which is specific to the deployment.
const channelName = "events"

// Channel returns the pub/sub channel for events of the deployment rdb connects to, e.g.
// "cao:{db3}:events": pub/sub is server-wide, so the name carries the database number (see package
// pubsub) and deployments on other databases of the same server never receive these events.
func Channel(rdb redis.UniversalClient) string {
	return pubsub.Channel(rdb, pubsub.DefaultPrefix, channelName)
}

// cancelChannelName is the last part of the channel on which the job messages that cancel a job are
// published too (CancelChannel).
const cancelChannelName = "cancels"

// CancelChannel returns the pub/sub channel on which every job message that cancels a job is
// published as well as on Channel, e.g. "cao:{db3}:cancels". Workers act on nothing else of the
// events: they read this channel (ListenCancels) instead of every event of the fleet, which would
// cost each worker, and Redis once per worker, the fleet's whole event traffic.
func CancelChannel(rdb redis.UniversalClient) string {
	return pubsub.Channel(rdb, pubsub.DefaultPrefix, cancelChannelName)
}

// Message is the wire form of one event, identical for REST, WebSocket and pub/sub.
type Message struct {
	Type    string    `json:"type"` // "job" or "step"
	Seq     int64     `json:"seq"`
	JobID   string    `json:"job_id"`
	Step    string    `json:"step,omitempty"`
	Status  string    `json:"status"`
	Attempt *int      `json:"attempt,omitempty"`
	Run     int       `json:"run,omitempty"`
	At      time.Time `json:"at"`
	Error   string    `json:"error,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

// FromEvent converts a stored event to its wire form.
func FromEvent(e store.Event) Message {
	m := Message{Type: e.Type, Seq: e.Seq, JobID: e.JobID, Status: e.Status, At: e.At.UTC(), Error: e.Error, Reason: e.Reason}
	if e.Type == store.EventStep {
		m.Step = e.Step
		attempt := e.Attempt
		m.Attempt = &attempt
		m.Run = e.Run
	}
	return m
}

// FromEvents converts stored events to their wire form.
func FromEvents(evs []store.Event) []Message {
	out := make([]Message, len(evs))
	for i, e := range evs {
		out[i] = FromEvent(e)
	}
	return out
}

// Cancels reports whether the message cancels its job (a job message with status CANCELLED).
func (m Message) Cancels() bool {
	return m.Type == store.EventJob && m.Status == string(store.JobCancelled)
}

// Terminal reports whether the message ends its job (a job message with a terminal status).
func (m Message) Terminal() bool {
	return m.Type == store.EventJob && store.JobStatus(m.Status).Terminal()
}

// Publisher sends committed events to every interested process. Publishing is best effort: a lost
// message is recovered by readers from the event log in the database (they detect the seq gap).
type Publisher interface {
	// Post queues the events to be sent after those of earlier calls and returns at once.
	Post(evs []store.Event)
}

// encode marshals messages for the pub/sub channel (a JSON array).
func encode(msgs []Message) ([]byte, error) { return json.Marshal(msgs) }

// Decode parses a pub/sub payload.
func Decode(b []byte) ([]Message, error) {
	var msgs []Message
	err := json.Unmarshal(b, &msgs)
	return msgs, err
}
