# Verify the offline package (SHA256SUMS, and the vendor signature when openssl is available),
# then docker load its images. Windows PowerShell 5.1 and PowerShell 7.
[CmdletBinding()]
param([string]$Package = (Split-Path -Parent $PSScriptRoot))
$ErrorActionPreference = 'Stop'
Set-Location $Package
if (-not (Test-Path SHA256SUMS)) { throw "$Package has no SHA256SUMS; is this an unpacked chexnet-offline package?" }

Write-Host "==> verifying checksums in $Package"
foreach ($line in Get-Content SHA256SUMS) {
    $expected, $file = $line -split '\s+', 2
    if (-not (Test-Path -LiteralPath $file)) { throw "$file is missing from the package; copy it again." }
    $actual = (Get-FileHash -LiteralPath $file -Algorithm SHA256).Hash.ToLowerInvariant()
    if ($actual -ne $expected) { throw "$file is damaged (sha256 mismatch); copy the package again." }
}

$key = Get-ChildItem license\keys\*.pem | Select-Object -First 1
$openssl = Get-Command openssl -ErrorAction SilentlyContinue
if ($openssl -and $key) {
    & openssl pkeyutl -verify -pubin -inkey $key.FullName -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "the vendor signature over SHA256SUMS does not verify; do not install this package." }
    Write-Host "==> vendor signature OK (key $($key.Name): compare its name with the key id the vendor sent you)"
} else {
    Write-Warning 'openssl is not on the PATH: the vendor signature was not checked (SHA256SUMS were).'
}

foreach ($archive in Get-ChildItem images\*.tar.gz) {
    Write-Host "==> docker load $($archive.Name)"
    & docker load -i $archive.FullName
    if ($LASTEXITCODE -ne 0) { throw "docker load $($archive.Name) failed." }
}
