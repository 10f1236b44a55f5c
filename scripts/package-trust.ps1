# Offline package trust for Windows PowerShell 5.1 and PowerShell 7, dot-sourced by load-images.ps1 and
# install.ps1; step for step with package-trust.sh. The key that verifies a package never comes from
# the package: the vendor's certificate (vendor_package.crt) or its sha256 fingerprint reaches the site
# out of band. Verification uses only .NET Framework (X509Certificate2, RSA-PSS over SHA-256): no openssl.
$script:NoKeySentence = 'no vendor key given: pass -VendorKey vendor_package.crt or -VendorFingerprint HEX, which the vendor sends with your licence token (never trust a key from inside the package).'

function Get-VendorCertificate([string]$Path) {
    try { return New-Object System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList (Resolve-Path -LiteralPath $Path).Path }
    catch { throw "$Path is not the vendor's certificate (vendor_package.crt, PEM)." }
}

# sha256 of the certificate's DER, 64 lower-case hex digits.
function Get-CertFingerprint([string]$Path) {
    $sha = [System.Security.Cryptography.SHA256]::Create()
    try { return (($sha.ComputeHash((Get-VendorCertificate $Path).RawData) | ForEach-Object { $_.ToString('x2') }) -join '') }
    finally { $sha.Dispose() }
}

# $true when SigFile is the vendor's RSA-PSS/SHA-256 signature over File (hashed as a stream: packages are GBs).
function Test-VendorSignature([string]$CertPath, [string]$File, [string]$SigFile) {
    $rsa = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPublicKey((Get-VendorCertificate $CertPath))
    if (-not $rsa) { return $false }
    $sha = [System.Security.Cryptography.SHA256]::Create()
    $stream = [System.IO.File]::OpenRead((Resolve-Path -LiteralPath $File).Path)
    try { $hash = $sha.ComputeHash($stream) } finally { $stream.Dispose(); $sha.Dispose() }
    $signature = [System.IO.File]::ReadAllBytes((Resolve-Path -LiteralPath $SigFile).Path)
    return $rsa.VerifyHash($hash, $signature, [System.Security.Cryptography.HashAlgorithmName]::SHA256,
                           [System.Security.Cryptography.RSASignaturePadding]::Pss)
}

function ConvertTo-Fingerprint([string]$Value) { return ($Value -replace '[:\s]', '').ToLowerInvariant() }

# The certificate to verify with, from -VendorKey or from the package when -VendorFingerprint matches it.
function Resolve-VendorCertificate([string]$Package, [string]$VendorKey, [string]$VendorFingerprint) {
    if ($VendorKey) {
        if (-not (Test-Path -LiteralPath $VendorKey -PathType Leaf)) { throw "-VendorKey $VendorKey does not exist; use the vendor_package.crt the vendor sent with your token." }
        $actual = Get-CertFingerprint $VendorKey
        if ($VendorFingerprint -and $actual -ne (ConvertTo-Fingerprint $VendorFingerprint)) {
            throw "-VendorKey $VendorKey does not have the fingerprint given with -VendorFingerprint; ask the vendor which is right."
        }
        return (Resolve-Path -LiteralPath $VendorKey).Path
    }
    if ($VendorFingerprint) {
        $wanted = ConvertTo-Fingerprint $VendorFingerprint
        if ($wanted -notmatch '^[0-9a-f]{64}$') { throw '-VendorFingerprint must be the 64 hex digits printed on the delivery note.' }
        $inside = Join-Path $Package 'vendor_package.crt'
        if (-not (Test-Path -LiteralPath $inside)) { throw 'the package holds no vendor_package.crt to compare with the fingerprint; pass -VendorKey instead.' }
        if ((Get-CertFingerprint $inside) -ne $wanted) { throw "the package's signing certificate does not match the fingerprint from the vendor; do not install this package." }
        return $inside
    }
    throw $script:NoKeySentence
}

# The paths SHA256SUMS lists, with '/' separators (after Test-Package).
function Get-ListedFiles([string]$Package) {
    foreach ($line in Get-Content -LiteralPath (Join-Path $Package 'SHA256SUMS')) { ($line -split '  ', 2)[1] }
}

# The signature over SHA256SUMS, that every file is listed, every checksum. Changes nothing on the host.
function Test-Package([string]$Package, [string]$CertPath) {
    $sums = Join-Path $Package 'SHA256SUMS'
    $sig = Join-Path $Package 'SHA256SUMS.sig'
    if (-not (Test-Path -LiteralPath $sums) -or -not (Test-Path -LiteralPath $sig)) { throw "$Package has no SHA256SUMS or SHA256SUMS.sig; is this an unpacked chexnet-offline package?" }
    if (-not (Test-VendorSignature $CertPath $sums $sig)) { throw "the vendor signature over SHA256SUMS does not verify with $CertPath; do not install this package." }
    $expected = @{}
    foreach ($line in Get-Content -LiteralPath $sums) {
        if ($line -cnotmatch '^[0-9a-f]{64}  [A-Za-z0-9_.][A-Za-z0-9._/-]*$' -or $line -match '\.\./|/\.\.') {
            throw "SHA256SUMS holds a line that is not '<sha256>  <relative path>'; do not install this package."
        }
        $hash, $file = $line -split '  ', 2
        $expected[$file] = $hash
    }
    $root = (Resolve-Path -LiteralPath $Package).Path.TrimEnd('\', '/')
    foreach ($item in Get-ChildItem -LiteralPath $root -Recurse -Force) {
        $relative = $item.FullName.Substring($root.Length + 1) -replace '\\', '/'
        if ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) { throw "the package holds $relative, which is not a plain file; do not install this package." }
        if ($item.PSIsContainer -or $relative -in @('SHA256SUMS', 'SHA256SUMS.sig')) { continue }
        if (-not $expected.ContainsKey($relative)) { throw "the package holds $relative, which SHA256SUMS does not list; do not install this package." }
    }
    foreach ($file in $expected.Keys) {
        $path = Join-Path $root $file
        if (-not (Test-Path -LiteralPath $path -PathType Leaf)) { throw "a file of the package is damaged or missing ($file); copy the package again." }
        if ((Get-FileHash -LiteralPath $path -Algorithm SHA256).Hash.ToLowerInvariant() -ne $expected[$file]) {
            throw "a file of the package is damaged or missing ($file); copy the package again."
        }
    }
    Write-Host "==> package verified: vendor signature OK (certificate fingerprint $(Get-CertFingerprint $CertPath))"
}

# docker load the image archives SHA256SUMS lists (after Test-Package).
function Import-PackageImages([string]$Package) {
    foreach ($archive in Get-ListedFiles $Package) {
        if ($archive -notlike 'images/*.tar.gz') { continue }
        Write-Host "==> docker load $archive"
        & docker load -i (Join-Path $Package $archive)
        if ($LASTEXITCODE -ne 0) { throw "docker load $archive failed." }
    }
}
