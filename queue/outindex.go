package queue

import (
	"math"
	"slices"
	"sort"
)

// The outbox index: every answer in the outbox, by target, in the order
// its answers come due, kept in memory so that the relay's look at what is
// due reads only the records it returns. The look read the whole outbox
// from the start, passing over answers not yet due: 48 ms over 200,000
// waiting answers, again after every batch and every commit that added
// one, so with a results broker away or refusing the relay kept a core
// busy in proportion to the outbox, and past about 1M answers it fell
// behind answers coming due (found by trying to break it;
// BenchmarkOutboxDue, TestOutboxLookReadsOnlyDue). Due times are spread
// over all ids, so no seek by id helps.
//
// Open builds it in the scan that counts the outbox (reading each record's
// target and times, never its body); each commit that adds, fails or
// removes an answer changes it after the commit, as the counters are
// (txn.outOps, applyTxn). It takes 16 bytes per answer in full blocks (as
// Open fills them, and as new answers come), about 21 once failed answers
// have been given new retry times for a while; nothing of it is stored.
// A look costs a step per answer it returns per target not busy.

// outBlock is the most items an outList block holds.
const outBlock = 512

// outItem is one answer in an outList.
type outItem struct {
	at int64 // Unix ns: CreatedAt of a fresh answer, NextAt of a failed one
	id uint64
}

// outList is a list of items sorted by (at, id), in blocks of up to
// outBlock. Inserting and removing cost a search and a move within one
// block.
type outList struct {
	blocks [][]outItem
	n      int
}

func (l *outList) less(a, b outItem) bool {
	return a.at < b.at || a.at == b.at && a.id < b.id
}

// find returns the block it belongs in (the first whose last item is not
// less than it, else the last) and its position there; ok says it is there.
func (l *outList) find(it outItem) (bi, pos int, ok bool) {
	bi = sort.Search(len(l.blocks), func(i int) bool {
		b := l.blocks[i]
		return !l.less(b[len(b)-1], it)
	})
	if bi == len(l.blocks) {
		bi--
	}
	b := l.blocks[bi]
	pos = sort.Search(len(b), func(k int) bool { return !l.less(b[k], it) })
	return bi, pos, pos < len(b) && b[pos] == it
}

func (l *outList) insert(it outItem) {
	if len(l.blocks) == 0 {
		l.blocks = append(l.blocks, append(make([]outItem, 0, 8), it))
		l.n++
		return
	}
	bi, pos, ok := l.find(it)
	if ok {
		return
	}
	b := l.blocks[bi]
	if len(b) >= outBlock {
		if pos == len(b) && bi == len(l.blocks)-1 {
			// Past the end (answers come in order): a new block, this
			// one full.
			l.blocks = append(l.blocks, append(make([]outItem, 0, outBlock), it))
			l.n++
			return
		}
		half := len(b) / 2
		nb := make([]outItem, len(b)-half, outBlock)
		copy(nb, b[half:])
		l.blocks[bi] = b[:half]
		l.blocks = slices.Insert(l.blocks, bi+1, nb)
		if pos > half {
			bi, pos = bi+1, pos-half
		}
		b = l.blocks[bi]
	}
	l.blocks[bi] = slices.Insert(b, pos, it)
	l.n++
}

func (l *outList) remove(it outItem) bool {
	if len(l.blocks) == 0 {
		return false
	}
	bi, pos, ok := l.find(it)
	if !ok {
		return false
	}
	b := slices.Delete(l.blocks[bi], pos, pos+1)
	l.blocks[bi] = b
	l.n--
	switch {
	case len(b) == 0:
		l.blocks = slices.Delete(l.blocks, bi, bi+1)
	case len(b) < outBlock/4:
		// A block nearly emptied joins a neighbour that has room: blocks
		// stay at least a quarter full, whatever was removed.
		if bi+1 < len(l.blocks) && len(b)+len(l.blocks[bi+1]) <= outBlock {
			l.blocks[bi] = append(b, l.blocks[bi+1]...)
			l.blocks = slices.Delete(l.blocks, bi+1, bi+2)
		} else if bi > 0 && len(b)+len(l.blocks[bi-1]) <= outBlock {
			l.blocks[bi-1] = append(l.blocks[bi-1], b...)
			l.blocks = slices.Delete(l.blocks, bi, bi+1)
		}
	}
	return true
}

// outCursor walks an outList forwards.
type outCursor struct {
	l    *outList
	b, i int
}

// cursorAt returns a cursor at the first item not less than it.
func (l *outList) cursorAt(it outItem) outCursor {
	if len(l.blocks) == 0 {
		return outCursor{l: l}
	}
	bi, pos, _ := l.find(it)
	c := outCursor{l: l, b: bi, i: pos}
	if pos == len(l.blocks[bi]) {
		c.b, c.i = bi+1, 0
	}
	return c
}

func (c *outCursor) item() (outItem, bool) {
	if c.b >= len(c.l.blocks) {
		return outItem{}, false
	}
	return c.l.blocks[c.b][c.i], true
}

func (c *outCursor) next() {
	if c.i++; c.i >= len(c.l.blocks[c.b]) {
		c.b, c.i = c.b+1, 0
	}
}

// outQueue is one target's answers: fresh ones (never failed: due at
// once) by when they were written, failed ones by retry time.
type outQueue struct {
	fresh, failed outList
	build         [2][]outItem // fresh and failed, while Open gathers them
}

// outIndex is the outbox's answers by target (see above). Journal.outMu
// guards it.
type outIndex struct {
	targets map[string]*outQueue
	// damaged are answers whose record does not read: the look reads
	// them every time (they are logged and left in place, as before).
	damaged map[uint64]struct{}
}

func newOutIndex() *outIndex {
	return &outIndex{targets: map[string]*outQueue{}, damaged: map[uint64]struct{}{}}
}

// outPos is where an answer is in the index.
type outPos struct {
	id      uint64
	target  string
	at      int64 // see outItem
	fresh   bool
	damaged bool // target or times do not read: in outIndex.damaged
}

// outPosOf is the position of m.
func outPosOf(m *Out) outPos {
	next := unixNano(m.NextAt)
	if next == 0 {
		return outPos{id: m.ID, target: m.Target, at: unixNano(m.CreatedAt), fresh: true}
	}
	return outPos{id: m.ID, target: m.Target, at: next}
}

// outFields are what the index needs of a stored outbox record.
type outFields struct {
	target        []byte // the record's own bytes: not copied
	created, next int64  // Unix ns
	attempts      uint64
}

// readOutPos reads the target, times and attempts of a stored outbox
// record without checking or copying the rest.
func readOutPos(data []byte) (f outFields, ok bool) {
	if len(data) < 5 || data[0] != outFormat {
		return f, false
	}
	d := decoder{b: data[1 : len(data)-4]}
	d.uvarint() // entry seq
	d.skip()    // kind
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		return f, false
	}
	f.target, d.b = d.b[:n:n], d.b[n:]
	d.skip() // destination
	nh := d.uvarint()
	for i := uint64(0); i < nh && d.err == nil; i++ {
		d.skip()
		d.skip()
	}
	d.skip() // body
	f.created = d.varint()
	f.attempts = d.uvarint()
	d.skip() // last error
	f.next = d.varint()
	return f, d.err == nil
}

// storedOutPos is the position of stored record data of answer id.
func storedOutPos(id uint64, data []byte) outPos {
	f, ok := readOutPos(data)
	switch {
	case !ok:
		return outPos{id: id, damaged: true}
	case f.next == 0:
		return outPos{id: id, target: string(f.target), at: f.created, fresh: true}
	}
	return outPos{id: id, target: string(f.target), at: f.next}
}

// outBuilder makes an outIndex of the stored outbox, at Open: it
// gathers each target's answers and sorts them once (inserting them one
// by one cost twice as much).
type outBuilder struct {
	x *outIndex
}

// add adds stored record data of answer id, and returns what it read of
// it (ok false: it does not read); the target's name is copied once per
// target, not per answer.
func (bl *outBuilder) add(id uint64, data []byte) (f outFields, ok bool) {
	if bl.x == nil {
		bl.x = newOutIndex()
	}
	if f, ok = readOutPos(data); !ok {
		bl.x.damaged[id] = struct{}{}
		return f, false
	}
	q := bl.x.targets[string(f.target)]
	if q == nil {
		q = &outQueue{}
		bl.x.targets[string(f.target)] = q
	}
	if f.next == 0 {
		q.build[0] = append(q.build[0], outItem{f.created, id})
	} else {
		q.build[1] = append(q.build[1], outItem{f.next, id})
	}
	return f, true
}

// index returns the index made.
func (bl *outBuilder) index() *outIndex {
	if bl.x == nil {
		return newOutIndex()
	}
	for _, q := range bl.x.targets {
		q.fresh.fill(q.build[0])
		q.failed.fill(q.build[1])
		q.build = [2][]outItem{}
	}
	return bl.x
}

// fill makes empty l hold items, in full blocks.
func (l *outList) fill(items []outItem) {
	items = sortByAt(items) // in id order: the outbox is read so
	for len(items) > 0 {
		n := min(len(items), outBlock)
		l.blocks = append(l.blocks, append(make([]outItem, 0, n), items[:n]...))
		l.n += n
		items = items[n:]
	}
}

func (x *outIndex) add(p outPos) {
	if p.damaged {
		x.damaged[p.id] = struct{}{}
		return
	}
	q := x.targets[p.target]
	if q == nil {
		q = &outQueue{}
		x.targets[p.target] = q
	}
	if p.fresh {
		q.fresh.insert(outItem{p.at, p.id})
	} else {
		q.failed.insert(outItem{p.at, p.id})
	}
}

// remove takes the answer at p out; one the look found damaged (see
// markDamaged) is taken out of the damaged ones.
func (x *outIndex) remove(p outPos) {
	if _, ok := x.damaged[p.id]; ok {
		delete(x.damaged, p.id)
		return
	}
	q := x.targets[p.target]
	if q == nil {
		return
	}
	if p.fresh {
		q.fresh.remove(outItem{p.at, p.id})
	} else {
		q.failed.remove(outItem{p.at, p.id})
	}
	if q.fresh.n == 0 && q.failed.n == 0 {
		delete(x.targets, p.target)
	}
}

// has reports whether the answer at p is there (or is damaged), for Check.
func (x *outIndex) has(p outPos) bool {
	if _, ok := x.damaged[p.id]; ok || p.damaged {
		return ok
	}
	q := x.targets[p.target]
	if q == nil {
		return false
	}
	l := &q.failed
	if p.fresh {
		l = &q.fresh
	}
	if len(l.blocks) == 0 {
		return false
	}
	_, _, ok := l.find(outItem{p.at, p.id})
	return ok
}

func (x *outIndex) len() int {
	n := len(x.damaged)
	for _, q := range x.targets {
		n += q.fresh.n + q.failed.n
	}
	return n
}

// markDamaged moves the answer at p, whose record the look found does not
// decode, to the damaged ones: read at every look and logged, it no longer
// takes a place among the due answers.
func (x *outIndex) markDamaged(p outPos) {
	if p.damaged {
		return
	}
	q := x.targets[p.target]
	if q == nil {
		return
	}
	l := &q.failed
	if p.fresh {
		l = &q.fresh
	}
	if l.remove(outItem{p.at, p.id}) {
		if q.fresh.n == 0 && q.failed.n == 0 {
			delete(x.targets, p.target)
		}
		x.damaged[p.id] = struct{}{}
	}
}

// due returns the damaged answers, and up to max answers due at now of the
// targets skip does not name (nil names none), those due longest first:
// first those whose retry time is more than OutboxMaxDelay ahead (see
// atDue: scheduled under a clock since turned back), then the others by
// when they became due, a fresh answer when it was written and a failed
// one at its retry time; in each, by that time and then by id. The work is
// in proportion to what it returns and the number of targets.
func (x *outIndex) due(max int, now int64, skip func(target string) bool) (due []outPos, damaged []uint64) {
	for id := range x.damaged {
		damaged = append(damaged, id)
	}
	slices.Sort(damaged)
	limit := now + int64(OutboxMaxDelay)
	if limit < now {
		limit = math.MaxInt64
	}
	type stream struct {
		target string
		c      outCursor
		kind   int // one of the three below
	}
	const (
		ahead = iota // failed, retry time beyond limit: all due
		since        // failed, due while the retry time is at or before now
		fresh        // never tried: all due
	)
	var streams []*stream
	for name, q := range x.targets {
		if skip != nil && skip(name) {
			continue
		}
		if q.failed.n > 0 {
			streams = append(streams, &stream{name, q.failed.cursorAt(outItem{limit, math.MaxUint64}), ahead}, &stream{name, q.failed.cursorAt(outItem{math.MinInt64, 0}), since})
		}
		if q.fresh.n > 0 {
			streams = append(streams, &stream{name, q.fresh.cursorAt(outItem{math.MinInt64, 0}), fresh})
		}
	}
	// head is the stream's next due item and its class (ahead first).
	head := func(s *stream) (outItem, int, bool) {
		it, ok := s.c.item()
		switch {
		case !ok:
			return it, 0, false
		case s.kind == ahead:
			return it, 0, true // the cursor starts past limit
		case s.kind == since:
			return it, 1, it.at <= now
		}
		return it, 1, true
	}
	for len(due) < max {
		var best *stream
		var bestItem outItem
		bestClass := 0
		for _, s := range streams {
			it, class, ok := head(s)
			if !ok {
				continue
			}
			if best == nil || class < bestClass || class == bestClass && (it.at < bestItem.at || it.at == bestItem.at && it.id < bestItem.id) {
				best, bestItem, bestClass = s, it, class
			}
		}
		if best == nil {
			break
		}
		due = append(due, outPos{id: bestItem.id, target: best.target, at: bestItem.at, fresh: best.kind == fresh})
		best.c.next()
	}
	return due, damaged
}

// sortByAt sorts items, in id order, by (at, id): a stable radix sort by
// at, a byte at a time, passing over the bytes all share (retry times lie
// within minutes of each other). A comparison sort took 35 ms of Open
// over 200,000 failed answers; this takes a few.
func sortByAt(items []outItem) []outItem {
	if len(items) < 2 {
		return items
	}
	var counts [8][256]int
	for _, it := range items {
		k := uint64(it.at) ^ 1<<63 // negative times first
		for d := range counts {
			counts[d][byte(k>>(8*d))]++
		}
	}
	tmp := make([]outItem, len(items))
	for d := range counts {
		c := &counts[d]
		if c[byte((uint64(items[0].at)^1<<63)>>(8*d))] == len(items) {
			continue // every item has this byte
		}
		pos := 0
		for i, n := range c {
			c[i] = pos
			pos += n
		}
		for _, it := range items {
			b := byte((uint64(it.at) ^ 1<<63) >> (8 * d))
			tmp[c[b]] = it
			c[b]++
		}
		items, tmp = tmp, items
	}
	return items
}
