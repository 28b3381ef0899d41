package redisconntest

import "strings"

// SlotCount is the number of hash slots of a Redis Cluster.
const SlotCount = 16384

// Slot returns the Redis Cluster hash slot of key, as CLUSTER KEYSLOT computes it: CRC16 (XMODEM)
// modulo 16384 of the key's hash tag — the part between the first '{' and the next '}' when that
// part is not empty — or of the whole key. A Lua script or MULTI runs on a cluster only if all the
// keys it names have the same slot; tests check that with Slot, without a cluster.
func Slot(key string) int {
	return int(crc16(HashTag(key))) % SlotCount
}

// HashTag returns the part of key that Redis Cluster hashes: the non-empty text between the first
// '{' and the first '}' after it, or the whole key.
func HashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum of the cluster
// specification.
func crc16(s string) uint16 {
	var crc uint16
	for i := range len(s) {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
