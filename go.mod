module github.com/cfsroot/cfsroot

go 1.26
