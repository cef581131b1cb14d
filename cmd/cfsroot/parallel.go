package main

import (
	"runtime"
	"sync"
)

// forEach calls fn(i) for i in [0, n) on up to threads goroutines (the
// number of CPUs when threads < 1): the object commands' work is per object
// and independent.
func forEach(n, threads int, fn func(i int)) {
	if threads < 1 {
		threads = runtime.GOMAXPROCS(0)
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(threads, n)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				fn(i)
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
}
