package block

// l2Cache keeps the most recently used L2 tables by offset.
type l2Cache struct {
	max   int
	tick  uint64
	items map[uint64]*l2Item
}

type l2Item struct {
	t    []uint64
	used uint64
}

func newL2Cache(max int) *l2Cache { return &l2Cache{max: max, items: map[uint64]*l2Item{}} }

func (c *l2Cache) get(off uint64) ([]uint64, bool) {
	it, ok := c.items[off]
	if !ok {
		return nil, false
	}
	c.tick++
	it.used = c.tick
	return it.t, true
}

func (c *l2Cache) put(off uint64, t []uint64) {
	if len(c.items) >= c.max {
		var oldest uint64
		var oldUsed uint64 = ^uint64(0)
		for k, it := range c.items {
			if it.used < oldUsed {
				oldest, oldUsed = k, it.used
			}
		}
		delete(c.items, oldest)
	}
	c.tick++
	c.items[off] = &l2Item{t: t, used: c.tick}
}
