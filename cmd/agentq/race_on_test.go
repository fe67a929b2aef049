//go:build race

package main

// raceEnabled builds the agent binary of the tests with the race detector
// when the tests themselves run with it.
const raceEnabled = true
