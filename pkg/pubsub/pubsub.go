// Package pubsub names the Redis pub/sub channels CAO uses, in one place.
//
// Redis keys live in a logical database, but pub/sub channels do not: a message published on a
// connection to DB 3 reaches every subscriber of that channel on the server, whatever database its
// connection selected. Two deployments that share a Redis server on different DB numbers would
// therefore see each other's messages on a fixed channel name. Every channel name built here carries
// the client's database number and the key prefix, so such deployments never share a channel.
package pubsub

import (
	"strconv"

	"github.com/redis/go-redis/v9"
)

// DefaultPrefix starts CAO's channel names, as it starts its keys.
const DefaultPrefix = "cao:"

// DB returns the logical database rdb's connections select: Options().DB of a client or a ring, 0 for
// a cluster client (a cluster has only database 0) and for any other implementation.
func DB(rdb redis.UniversalClient) int {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().DB
	case *redis.Ring:
		return c.Options().DB
	}
	return 0
}

// Channel returns the name of the pub/sub channel name for the deployment whose keys start with
// prefix (DefaultPrefix when empty) in rdb's database: prefix + "{db<N>}:" + name, for example
// "cao:{db3}:events".
func Channel(rdb redis.UniversalClient, prefix, name string) string {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return prefix + "{db" + strconv.Itoa(DB(rdb)) + "}:" + name
}
