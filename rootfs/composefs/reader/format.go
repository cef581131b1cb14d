package reader

import "encoding/binary"

// On-disk constants of the composefs header and the subset of EROFS that
// composefs images use (see libcomposefs/lcfs-erofs.h and
// lcfs-writer-erofs.c of github.com/containers/composefs v1.0.8, and the
// kernel's fs/erofs/erofs_fs.h).
const (
	cfsMagic         = 0xd078629a // composefs header magic (LCFS_EROFS_MAGIC)
	cfsVersion       = 1          // composefs header version (LCFS_EROFS_VERSION)
	cfsFlagHasACL    = 1          // LCFS_EROFS_FLAGS_HAS_ACL
	maxFormatVersion = 1          // newest composefs format version we understand

	erofsMagic       = 0xe0f5e1e2
	superOffset      = 1024
	superSize        = 128
	blockBits        = 12
	blockSize        = 1 << blockBits
	slotBits         = 5 // inode slots are 32 bytes
	metaStart        = superOffset + superSize
	compactInodeSize = 32
	extInodeSize     = 64

	compatSBChecksum  = 0x1
	compatXattrFilter = 0x4
	incompatChunked   = 0x4 // EROFS_FEATURE_INCOMPAT_CHUNKED_FILE

	layoutFlatPlain  = 0
	layoutFlatInline = 2
	layoutChunkBased = 4

	chunkFormatBlkbitsMask = 0x1f
	chunkFormatIndexes     = 0x20
	nullAddr               = 0xffffffff

	xattrHeaderSize = 12 // erofs_xattr_ibody_header
	xattrEntrySize  = 4  // erofs_xattr_entry
	direntSize      = 12 // erofs_dirent

	xattrFilterSeed = 0x25BBE08F

	// Limits libcomposefs enforces; a valid image never exceeds them.
	maxNameLen       = 255  // LCFS_MAX_NAME_LENGTH
	pathMax          = 4096 // PATH_MAX: symlink targets are shorter
	maxInlineContent = 5000 // LCFS_INLINE_CONTENT_MAX
	maxChunks        = 1024 // LCFS_MAX_NONINLINE_CHUNKS
	maxXattrNameLen  = 255  // XATTR_NAME_MAX
)

// Linux file type bits of st_mode.
const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000
)

// EROFS dirent file types (EROFS_FT_*), indexed by what they mean.
var fileTypeOfMode = map[uint32]uint8{
	sIFREG:  1,
	sIFDIR:  2,
	sIFCHR:  3,
	sIFBLK:  4,
	sIFIFO:  5,
	sIFSOCK: 6,
	sIFLNK:  7,
}

// xattrPrefixes are the EROFS short name prefixes by e_name_index. Index 5
// (lustre.) is never written by composefs but is a valid EROFS prefix.
var xattrPrefixes = [...]string{
	"",
	"user.",
	"system.posix_acl_access",
	"system.posix_acl_default",
	"trusted.",
	"lustre.",
	"security.",
}

var le = binary.LittleEndian

// superBlock holds the superblock fields the reader uses.
type superBlock struct {
	magic               uint32
	checksum            uint32
	featureCompat       uint32
	blkszbits           uint8
	extslots            uint8
	rootNid             uint16
	inos                uint64
	buildTime           uint64
	buildTimeNsec       uint32
	blocks              uint32
	metaBlkaddr         uint32
	xattrBlkaddr        uint32
	featureIncompat     uint32
	extraDevices        uint16
	xattrPrefixCount    uint8
	packedNid           uint64
	xattrFilterReserved uint8
}

func decodeSuperBlock(b []byte) superBlock {
	return superBlock{
		magic:               le.Uint32(b[0:]),
		checksum:            le.Uint32(b[4:]),
		featureCompat:       le.Uint32(b[8:]),
		blkszbits:           b[12],
		extslots:            b[13],
		rootNid:             le.Uint16(b[14:]),
		inos:                le.Uint64(b[16:]),
		buildTime:           le.Uint64(b[24:]),
		buildTimeNsec:       le.Uint32(b[32:]),
		blocks:              le.Uint32(b[36:]),
		metaBlkaddr:         le.Uint32(b[40:]),
		xattrBlkaddr:        le.Uint32(b[44:]),
		featureIncompat:     le.Uint32(b[80:]),
		extraDevices:        le.Uint16(b[86:]),
		xattrPrefixCount:    b[91],
		packedNid:           le.Uint64(b[96:]),
		xattrFilterReserved: b[104],
	}
}
