module github.com/cfsroot/cfsroot

go 1.26.0

require (
	github.com/erofs/go-erofs v0.3.1
	github.com/google/go-tpm v0.9.8
	github.com/google/go-tpm-tools v0.4.11
	github.com/hugelgupf/vmtest v0.0.0-20240307030256-5d9f3d34a58d
	github.com/klauspost/compress v1.18.0
	github.com/smallstep/pkcs7 v0.2.3
	github.com/u-root/u-root v0.16.0
	github.com/ulikunitz/xz v0.5.15
	golang.org/x/sys v0.50.0
)

require (
	github.com/Netflix/go-expect v0.0.0-20220104043353-73e0943537d2 // indirect
	github.com/creack/pty v1.1.24 // indirect
	github.com/dustin/go-humanize v1.0.1 // indirect
	github.com/pierrec/lz4/v4 v4.1.22 // indirect
	github.com/u-root/uio v0.0.0-20240224005618-d2acac8f3701 // indirect
	golang.org/x/sync v0.18.0 // indirect
)
