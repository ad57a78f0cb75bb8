package policy

import (
	"crypto/sha256"
	"encoding/binary"
)

// interner numbers things by fingerprint. Numbers start at 1 (0 means "any"
// in policy keys), are never reused while the process runs (so an old
// number still in a map cannot take a new meaning), and can be seeded from a
// previous run.
type interner struct {
	byFP  map[uint64]uint32
	byID  map[uint32]uint64
	names map[uint32]string
	next  uint32
}

func newInterner() *interner {
	return &interner{byFP: map[uint64]uint32{}, byID: map[uint32]uint64{}, names: map[uint32]string{}, next: 1}
}

func (in *interner) seed(m map[uint32]uint64) {
	for id, fp := range m {
		if id == 0 {
			continue
		}
		in.byFP[fp] = id
		in.byID[id] = fp
		if id >= in.next {
			in.next = id + 1
		}
	}
}

func (in *interner) id(fp uint64) uint32 {
	if id, ok := in.byFP[fp]; ok {
		return id
	}
	for {
		id := in.next
		in.next++
		if in.next == 0 {
			in.next = 1
		}
		if _, used := in.byID[id]; used || id == 0 {
			continue
		}
		in.byFP[fp] = id
		in.byID[id] = fp
		return id
	}
}

// named interns a string.
func (in *interner) named(s string) uint32 {
	id := in.id(fingerprintString(s))
	in.names[id] = s
	return id
}

func (in *interner) name(id uint32) string { return in.names[id] }

// retain forgets numbers not in live (they stay unused until the counter
// wraps).
func (in *interner) retain(live map[uint32]bool) {
	for id, fp := range in.byID {
		if !live[id] {
			delete(in.byID, id)
			delete(in.byFP, fp)
			delete(in.names, id)
		}
	}
}

// all returns id -> fingerprint.
func (in *interner) all() map[uint32]uint64 {
	out := make(map[uint32]uint64, len(in.byID))
	for id, fp := range in.byID {
		out[id] = fp
	}
	return out
}

// fingerprint hashes a sorted list of keys (64 bits of SHA-256: a
// collision would merge two meanings under one number).
func fingerprint(keys []string) uint64 {
	h := sha256.New()
	var n [4]byte
	for _, k := range keys {
		binary.LittleEndian.PutUint32(n[:], uint32(len(k)))
		h.Write(n[:])
		h.Write([]byte(k))
	}
	return binary.LittleEndian.Uint64(h.Sum(nil))
}

func fingerprintString(s string) uint64 {
	sum := sha256.Sum256([]byte(s))
	return binary.LittleEndian.Uint64(sum[:])
}

// RuleFingerprint is the fingerprint under which a rule's number is
// recorded, so a restarted agent can give the rule the same number.
func RuleFingerprint(ref string) uint64 { return fingerprintString(ref) }
