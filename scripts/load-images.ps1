# Verify the offline package's tarball against the vendor's key given out of band (in a private copy: the
# tarball's signature, then the signature over SHA256SUMS, no unlisted file, every checksum), then docker
# load the images it lists; step for step with load-images.sh. install.ps1 does this itself.
# Windows PowerShell 5.1 and PowerShell 7, as Administrator; nothing beyond what Windows ships.
# Usage: .\scripts\load-images.ps1 (-VendorKey vendor_package.crt | -VendorFingerprint HEX)
#            [-Package chexnet-offline-<version>-<variant>.tar.gz (default: the one beside this package)]
[CmdletBinding()]
param(
    [string]$VendorKey,
    [string]$VendorFingerprint,
    [string]$Package
)
$ErrorActionPreference = 'Stop'
# Dot-sourced from its text: '.' with a path reads '[1]' in a folder name as a wildcard (see install.ps1).
. ([scriptblock]::Create([System.IO.File]::ReadAllText((Join-Path $PSScriptRoot 'package-trust.ps1'))))
try {
    Initialize-PackageStaging ([System.IO.Path]::GetDirectoryName($PSScriptRoot)) $Package $VendorKey $VendorFingerprint
    Import-PackageImages $script:Staged
} finally {
    Remove-PackageStaging
}
