# Verify the unpacked offline package against the vendor's key given out of band (signature over
# SHA256SUMS, no unlisted file, every checksum), then docker load the images it lists; step for step
# with load-images.sh. Windows PowerShell 5.1 and PowerShell 7; nothing beyond what Windows ships.
# Usage: .\scripts\load-images.ps1 (-VendorKey vendor_package.crt | -VendorFingerprint HEX) [-Package DIR]
[CmdletBinding()]
param(
    [string]$VendorKey,
    [string]$VendorFingerprint,
    [string]$Package = (Split-Path -Parent $PSScriptRoot)
)
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'package-trust.ps1')
$Package = (Resolve-Path -LiteralPath $Package).Path
$cert = Resolve-VendorCertificate $Package $VendorKey $VendorFingerprint
Test-Package $Package $cert
Import-PackageImages $Package
