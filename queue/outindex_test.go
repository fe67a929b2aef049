package queue

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// Ensure an outList stays sorted, in blocks of 1 to outBlock items, under
// random inserts and removals over several blocks (appends at the end, as
// new answers come, and anywhere, as failed ones get retry times), that a
// cursor from any item walks the rest in order, and that filling one at
// Open makes the same list.
func TestOutList(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var l outList
	var model []outItem
	cmpItem := func(a, b outItem) int { return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.id, b.id)) }
	check := func(step int) {
		t.Helper()
		var all []outItem
		for i, b := range l.blocks {
			if len(b) == 0 || len(b) > outBlock {
				t.Fatalf("step %d: block %d holds %d items", step, i, len(b))
			}
			all = append(all, b...)
		}
		if !slices.Equal(all, model) || l.n != len(model) {
			t.Fatalf("step %d: list of %d (n=%d) is not the %d items it should be", step, len(all), l.n, len(model))
		}
	}
	id := uint64(0)
	for step := 0; step < 20_000; step++ {
		switch op := rng.IntN(10); {
		case op < 4: // a new answer: at the end
			id++
			it := outItem{int64(id / 3), id}
			l.insert(it)
			model = append(model, it)
		case op < 7: // a failed one: anywhere
			id++
			it := outItem{rng.Int64N(int64(id/3) + 1), id}
			l.insert(it)
			i, _ := slices.BinarySearchFunc(model, it, cmpItem)
			model = slices.Insert(model, i, it)
		default:
			if len(model) == 0 {
				continue
			}
			i := rng.IntN(len(model))
			if step%7 == 0 {
				i = 0 // published in order
			}
			if !l.remove(model[i]) {
				t.Fatalf("step %d: %+v not removed", step, model[i])
			}
			model = slices.Delete(model, i, i+1)
		}
		if l.remove(outItem{-1, math.MaxUint64}) {
			t.Fatalf("step %d: removed an item never inserted", step)
		}
		if step%97 == 0 {
			check(step)
		}
	}
	check(-1)
	if len(l.blocks) < 10 {
		t.Fatalf("%d blocks: the test did not span several", len(l.blocks))
	}
	for _, from := range []int{0, 1, outBlock - 1, outBlock, len(model) / 2, len(model) - 1} {
		var rest []outItem
		for c := l.cursorAt(model[from]); ; c.next() {
			it, ok := c.item()
			if !ok {
				break
			}
			rest = append(rest, it)
		}
		if !slices.Equal(rest, model[from:]) {
			t.Fatalf("cursor from item %d walked %d items, want %d", from, len(rest), len(model)-from)
		}
	}
	if c := l.cursorAt(outItem{math.MaxInt64, 0}); func() bool { _, ok := c.item(); return ok }() {
		t.Fatal("a cursor past the last item has an item")
	}
	// Filled at once from the same items in id order.
	byID := slices.SortedFunc(slices.Values(model), func(a, b outItem) int { return cmp.Compare(a.id, b.id) })
	var f outList
	f.fill(byID)
	if all := slices.Concat(f.blocks...); !slices.Equal(all, model) || f.n != len(model) {
		t.Fatal("a filled list differs from the one built item by item")
	}
}

// Ensure sortByAt sorts by (at, id) items given in id order, negative
// times and equal ones too.
func TestSortByAt(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 2, 1000} {
		items := make([]outItem, n)
		for i := range items {
			at := rng.Int64N(1<<40) - 1<<39
			if i%3 == 0 {
				at = 42
			}
			items[i] = outItem{at, uint64(i)}
		}
		want := slices.Clone(items)
		slices.SortStableFunc(want, func(a, b outItem) int { return cmp.Compare(a.at, b.at) })
		if got := sortByAt(items); !slices.Equal(got, want) {
			t.Fatalf("sortByAt of %d items is not sorted", n)
		}
	}
}
